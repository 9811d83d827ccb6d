"""The dev stack's promises that need no running stack: `dev down` names the local servers it leaves running
and how to stop them; `dev up` refuses a port another process holds, naming it, and starts nothing;
`--json` timestamps carry their zone."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from poolctl.activities.providers.base import ProvisionRequest
from poolctl.activities.providers.local import LocalProvider
from poolctl.localserver.processes import kill_all_local_servers
from poolctl.settings import Settings
from poolctl.starter import devstack
from poolctl.starter.devstack import running_local_servers
from poolctl.starter.output import print_json


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_dev_down_names_the_local_servers_it_leaves_running_and_how_to_stop_them(tmp_path: Path):
    state = tmp_path / "state"
    settings = Settings(
        state_dir=state, temporal_address=f"127.0.0.1:{free_port()}", temporal_ui_port=free_port()
    )
    provider = LocalProvider(state)
    try:
        info = await provider.provision(ProvisionRequest(pool="ops/web", idempotency_key="k1"))
        assert running_local_servers(state) == {"ops/web": [info.server_id]}
        said: list[str] = []
        devstack.down(settings, say=said.append)
        text = "\n".join(said)
        assert f"left running: 1 local server(s) of pool ops/web ({info.server_id})" in text
        assert "poolctl delete pool web --team ops" in text and "poolctl dev down --purge" in text
        assert running_local_servers(state) == {"ops/web": [info.server_id]}  # it really left it running
        [row] = [c for c in devstack.status(settings) if c.name == f"server {info.server_id}"]  # dev status
        assert row.alive and row.pid and f"pool ops/web, http://127.0.0.1:{info.port}" == row.detail
    finally:
        kill_all_local_servers(state)
    assert running_local_servers(state) == {}
    said = []
    devstack.down(settings, say=said.append)
    assert not any("left running" in line for line in said)


def test_dev_up_refuses_a_port_held_by_another_process_and_names_it(tmp_path: Path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import socket, sys, time\n"
         "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
         "print(s.getsockname()[1], flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        held = int(holder.stdout.readline())
        settings = Settings(
            state_dir=tmp_path / "state", temporal_address=f"127.0.0.1:{free_port()}", temporal_ui_port=held
        )
        with pytest.raises(RuntimeError) as e:
            devstack.up(settings, say=lambda m: None)
        assert f"port {held} is held by pid {holder.pid}" in str(e.value)
        assert "POOLCTL_TEMPORAL_UI_PORT" in str(e.value)
        assert not (settings.state_dir / "pids" / "temporal.pid").exists()  # nothing was started
    finally:
        holder.terminate()  # our own process, by its pid
        holder.wait(10)


def test_json_output_gives_every_timestamp_its_zone(capsys: pytest.CaptureFixture[str]):
    from poolctl.domain.pool_state import ServerRecord

    naive = datetime(2026, 3, 1, 12, 30)  # as SQLite hands back a stored UTC time
    aware = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    model = ServerRecord(server_id="s1", host="127.0.0.1", port=1, created_at=naive)
    print_json(
        {"created_at": naive, "rows": [{"at": aware}], "model": model, "none": None, "path": Path("/x")}
    )
    out = json.loads(capsys.readouterr().out)
    assert out["created_at"] == "2026-03-01T12:30:00+00:00"
    assert out["rows"][0]["at"] == "2026-03-01T12:30:00+00:00"
    assert out["model"]["created_at"] == "2026-03-01T12:30:00+00:00"
    assert out["model"]["health_changed_at"] is None and out["model"]["port"] == 1
    assert out["none"] is None and out["path"] == "/x"
