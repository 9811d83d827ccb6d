"""`Settings.as_env()`: the variables that give a started process (the dev stack's worker, a built-in
balancer) the same settings as the command that started it, non-default and secret ones included."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from poolctl.payload_codec import new_key_text
from poolctl.settings import Settings


def test_settings_survive_the_trip_through_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = Settings(
        state_dir=tmp_path / "state",
        temporal_address="127.0.0.1:17233",
        task_queue="private",
        worker_metrics_port=0,  # a second stack's worker must not bind the first one's metrics port
        activity_timeout_s=8.5,
        payload_key=new_key_text(),
        team_auth_legacy_before=datetime(2026, 11, 30, 12, 0, tzinfo=UTC),
    )
    env = given.as_env()
    assert env["POOLCTL_WORKER_METRICS_PORT"] == "0" and env["POOLCTL_TASK_QUEUE"] == "private"
    for name in list(Settings.model_fields):
        monkeypatch.delenv(f"POOLCTL_{name.upper()}", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings() == given
