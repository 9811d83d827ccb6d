"""Replay every recorded history (tests/histories/) against today's workflow code: a change that would
make a running workflow non-deterministic fails here (guard it with `workflow.patched`, see
docs/workflow-changes.md, or re-record with `make histories` when no such workflow can exist)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from temporalio.common import HeaderCodecBehavior
from temporalio.worker import Replayer

from poolctl.payload_codec import parse_key
from poolctl.settings import Settings
from poolctl.team_auth import TeamKeys
from poolctl.team_interceptor import TeamAuthInterceptor
from poolctl.temporal_client import data_converter
from poolctl.worker import WORKFLOWS
from tests.replay import HISTORY_PAYLOAD_KEY, HISTORY_TEAM_AUTH_KEY, history_features, saved_histories

HISTORIES = saved_histories()
TEAM_KEYS = TeamKeys(parse_key(HISTORY_TEAM_AUTH_KEY, "HISTORY_TEAM_AUTH_KEY"))
TEAM_CHECKS_SINCE = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
"""Histories recorded before team checks existed carry no team headers: they replay as the workflows that
ran at the upgrade do, with `team_auth_legacy_before` set to the upgrade's time (docs/security.md#teams)."""


def test_every_workflow_type_has_a_recorded_history() -> None:
    recorded = {h.workflow_type for h in HISTORIES}
    missing = sorted(wf.__name__ for wf in WORKFLOWS if wf.__name__ not in recorded)
    assert not missing, f"no recorded history for {missing}: run `make histories`"


def test_both_paths_of_the_policy_pause_patch_are_recorded() -> None:
    """`policy-pause-at-once` (workflows/policy.py): a run that took the new path (its marker) and a run
    paused before the patch existed (pinned), so both replay."""
    policy = [(h, history_features(h.history)) for h in HISTORIES if h.workflow_type == "PolicyWorkflow"]
    assert any("patch:policy-pause-at-once" in f for _, f in policy), "run `make histories`"
    assert any(
        "signal:pause" in f and "patch:policy-pause-at-once" not in f and h.path.parent.name == "pinned"
        for h, f in policy
    )


@pytest.mark.parametrize("saved", HISTORIES, ids=[h.path.name for h in HISTORIES])
async def test_history_replays_without_nondeterminism(saved) -> None:
    converter = data_converter(Settings(payload_key=HISTORY_PAYLOAD_KEY))  # type: ignore[arg-type]
    # as the worker runs: headers decoded, every message checked by the team interceptor with the key the
    # histories were recorded with (a signal it would drop now but did not then fails the replay)
    replayer = Replayer(
        workflows=WORKFLOWS,
        data_converter=converter,
        interceptors=[TeamAuthInterceptor(TEAM_KEYS, legacy_before=TEAM_CHECKS_SINCE)],
        header_codec_behavior=HeaderCodecBehavior.CODEC,
    )
    result = await replayer.replay_workflow(saved.history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{saved.path.name}: {result.replay_failure}"
