"""Replay every recorded history (tests/histories/) against today's workflow code: a change that would
make a running workflow non-deterministic fails here (guard it with `workflow.patched`, see
docs/workflow-changes.md, or re-record with `make histories` when no such workflow can exist)."""

from __future__ import annotations

import pytest
from temporalio.worker import Replayer

from poolctl.settings import Settings
from poolctl.temporal_client import data_converter
from poolctl.worker import WORKFLOWS
from tests.replay import HISTORY_PAYLOAD_KEY, saved_histories

HISTORIES = saved_histories()


def test_every_workflow_type_has_a_recorded_history() -> None:
    recorded = {h.workflow_type for h in HISTORIES}
    missing = sorted(wf.__name__ for wf in WORKFLOWS if wf.__name__ not in recorded)
    assert not missing, f"no recorded history for {missing}: run `make histories`"


@pytest.mark.parametrize("saved", HISTORIES, ids=[h.path.name for h in HISTORIES])
async def test_history_replays_without_nondeterminism(saved) -> None:
    converter = data_converter(Settings(payload_key=HISTORY_PAYLOAD_KEY))  # type: ignore[arg-type]
    replayer = Replayer(workflows=WORKFLOWS, data_converter=converter)
    result = await replayer.replay_workflow(saved.history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{saved.path.name}: {result.replay_failure}"
