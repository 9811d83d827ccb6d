"""Recorded workflow histories: harvest them from a test session's dev server, and load them for replay.

`POOLCTL_RECORD_HISTORIES=tests/histories pytest tests/test_pool_lifecycle.py ...` (or `make histories`)
saves, per workflow type, the longest runs the session produced; `tests/test_replay.py` replays every
saved file with the SDK's `Replayer` so that a change to workflow code that would break a running
workflow fails `make test` (see docs/workflow-changes.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client, WorkflowHistory

HISTORIES_DIR = Path(__file__).parent / "histories"
# Payloads in recorded histories are encrypted (every payload is, see payload_codec.py): `make histories`
# records with this fixed, test-only key so the replay test can decrypt them in any later session.
HISTORY_PAYLOAD_KEY = "bLMIRQX2OvnTPPQK9P2KWRko8qEpYRr7KBfDAE3YGK8="
# Likewise the team auth key: messages in a history carry proofs made with it, and the replay checks them.
HISTORY_TEAM_AUTH_KEY = "3q0Zy0m7yJ3j9cKc1rVQn8n2Qe9mM3m0oWm6Qd3l6Yk="
PER_TYPE = 3  # runs kept per workflow type: the longest ones exercise the most code
EXTRA_PER_TYPE = 3  # and at most this many more, each bringing a signal, update or patch the others lack
MAX_EVENTS = 1500  # keep files small: a longer run is skipped in favour of a shorter one


@dataclass
class SavedHistory:
    path: Path
    workflow_type: str
    history: WorkflowHistory


async def harvest(client: Client, out_dir: Path) -> list[Path]:
    """Save, per workflow type, the longest runs on the server (running ones included), then the longest
    run that brings a signal, update or patch marker none of the kept ones has (EXTRA_PER_TYPE at most):
    a patched path a test reached is replayed even when its run was short."""
    runs: dict[str, list[tuple[int, str, str]]] = {}
    async for wf in client.list_workflows(""):
        hist_len = wf.history_length or 0
        if not hist_len:  # visibility gives a running workflow's length only when it closes: count it
            history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
            hist_len = len(history.events)
        if 0 < hist_len <= MAX_EVENTS:
            runs.setdefault(wf.workflow_type, []).append((hist_len, wf.id, wf.run_id))
    collected: list[tuple[str, dict[str, object]]] = []
    for wf_type, found in sorted(runs.items()):
        kept: list[WorkflowHistory] = []
        covered: set[str] = set()
        for i, (_, wf_id, run_id) in enumerate(sorted(found, reverse=True)):
            if len(kept) >= PER_TYPE + EXTRA_PER_TYPE:
                break
            history = await client.get_workflow_handle(wf_id, run_id=run_id).fetch_history()
            features = history_features(history)
            if i >= PER_TYPE and features <= covered:
                continue
            covered |= features
            kept.append(history)
            payload = {
                "workflow_id": wf_id,
                "workflow_type": wf_type,
                "history": json.loads(history.to_json()),
            }
            collected.append((f"{wf_type}-{len(kept)}.json", payload))
    return _write(out_dir, collected)


def history_features(history: WorkflowHistory) -> set[str]:
    """The messages and patches a run took: `signal:NAME`, `update:NAME`, `patch:ID`."""
    out: set[str] = set()
    for e in history.events:
        if e.HasField("workflow_execution_signaled_event_attributes"):
            out.add("signal:" + e.workflow_execution_signaled_event_attributes.signal_name)
        elif e.HasField("workflow_execution_update_accepted_event_attributes"):
            request = e.workflow_execution_update_accepted_event_attributes.accepted_request
            out.add("update:" + request.input.name)
        elif e.HasField("marker_recorded_event_attributes"):
            details = e.marker_recorded_event_attributes.details
            for payload in details["patch-data"].payloads if "patch-data" in details else []:
                try:
                    out.add("patch:" + str(json.loads(payload.data)["id"]))
                except (ValueError, KeyError, TypeError):
                    out.add("patch:?")
    return out


def _write(out_dir: Path, collected: list[tuple[str, dict[str, object]]]) -> list[Path]:
    """Replace the saved histories with the collected ones."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.json"):
        old.unlink()
    written = []
    for name, payload in collected:
        path = out_dir / name
        path.write_text(json.dumps(payload, separators=(",", ":")))
        written.append(path)
    return written


def saved_histories(directory: Path = HISTORIES_DIR) -> list[SavedHistory]:
    """Every recorded history: the ones `make histories` writes, and those in `pinned/`, recorded with an
    older revision to keep a `workflow.patched` change's old path replaying (re-recording keeps them)."""
    out = []
    for path in sorted(directory.glob("*.json")) + sorted(directory.glob("pinned/*.json")):
        data = json.loads(path.read_text())
        out.append(
            SavedHistory(
                path=path,
                workflow_type=data["workflow_type"],
                history=WorkflowHistory.from_json(data["workflow_id"], data["history"]),
            )
        )
    return out
