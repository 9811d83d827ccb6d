"""The dev stack's promises: `dev down` names the local servers it leaves running and how to stop them;
`dev up` waits for a port another process still holds (a server still stopping) and starts once it is
released, or gives up after `port_release_wait_s` with one line naming the port and its holder, starting
nothing; `--json` timestamps carry their zone. The `dev up` tests run the real CLI on a private state dir
and private ports, holding a port with a listener of their own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
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


@contextlib.contextmanager
def port_held(port: int = 0) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A python process of this test listening on 127.0.0.1:`port` (0: any free port) until it is stopped;
    yields it and the port."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import socket, sys\n"
         f"s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\n"
         "print(s.getsockname()[1], flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        yield holder, int(holder.stdout.readline())
    finally:
        holder.kill()  # our own process, by its pid
        holder.wait(10)


def test_dev_up_refuses_a_port_held_by_another_process_and_names_it(tmp_path: Path):
    with port_held() as (holder, held):
        settings = Settings(
            state_dir=tmp_path / "state",
            temporal_address=f"127.0.0.1:{free_port()}",
            temporal_ui_port=held,
            port_release_wait_s=0,
        )
        with pytest.raises(RuntimeError) as e:
            devstack.up(settings, say=lambda m: None)
        assert f"port {held} is still held by pid {holder.pid}" in str(e.value)
        assert "POOLCTL_TEMPORAL_UI_PORT" in str(e.value)
        assert not (settings.state_dir / "pids" / "temporal.pid").exists()  # nothing was started


def stack_env(tmp_path: Path, temporal_port: int, wait_s: float) -> dict[str, str]:
    """`poolctl dev ...` on a private state dir, database and ports (never a real stack's or another test's)."""
    env = dict(os.environ)
    env.update(
        POOLCTL_ENV_FILE=os.devnull,
        POOLCTL_STATE_DIR=str(tmp_path / "stack"),
        POOLCTL_DATABASE_URL=f"sqlite:///{tmp_path / 'stack.db'}",
        POOLCTL_TEMPORAL_ADDRESS=f"127.0.0.1:{temporal_port}",
        POOLCTL_TEMPORAL_UI_PORT=str(free_port()),
        POOLCTL_WORKER_METRICS_PORT="0",
        POOLCTL_PORT_RELEASE_WAIT_S=str(wait_s),
    )
    return env


async def dev(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "poolctl.starter.cli", "dev", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.slow
async def test_dev_up_waits_for_a_held_port_to_be_released_then_starts(tmp_path: Path):
    with port_held() as (holder, port):
        env = stack_env(tmp_path, port, wait_s=300)  # far longer than this test needs: it releases the port
        up = await dev(env, "up")
        try:
            assert up.stdout is not None
            said = ""
            while "waiting up to" not in said:  # dev up says it waits, naming the port and its holder
                line = await asyncio.wait_for(up.stdout.readline(), 120)
                assert line, f"dev up ended without waiting: {said}"
                said += line.decode()
            assert f"port {port} is held by pid {holder.pid}" in said
            holder.kill()  # the port is released while dev up waits
            holder.wait(10)
            out, err = await asyncio.wait_for(up.communicate(), 180)
            assert up.returncode == 0, (said + out.decode(), err.decode())
            assert "ready" in out.decode() and "Traceback" not in err.decode()
            assert (tmp_path / "stack" / "pids" / "temporal.pid").exists()
        finally:
            if up.returncode is None:
                up.kill()  # our own process
                await up.wait()
            down = await dev(env, "down")
            await asyncio.wait_for(down.communicate(), 120)


async def test_dev_up_gives_up_on_a_port_never_released_with_one_line_naming_its_holder(tmp_path: Path):
    wait_s = 2.0
    with port_held() as (holder, port):
        env = stack_env(tmp_path, port, wait_s)
        started = time.monotonic()
        up = await dev(env, "up")
        out, err = await asyncio.wait_for(up.communicate(), 120)
        took = time.monotonic() - started
    assert up.returncode != 0
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert len(lines) == 1, err.decode()
    assert f"port {port} is still held by pid {holder.pid} ({sys.executable}" in lines[0]
    assert "POOLCTL_TEMPORAL_ADDRESS" in lines[0]
    assert "Traceback" not in out.decode() + err.decode()
    # within its bound: the wait, plus starting the CLI (slow on a loaded machine; never asserted tighter)
    assert took < wait_s + 60
    assert not (tmp_path / "stack" / "pids" / "temporal.pid").exists()  # nothing was started


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


def test_a_worker_that_logged_its_stop_after_polling_is_seen_as_stopping(tmp_path: Path):
    """`dev up` right after an interrupted `dev down`: the old worker is still finishing its tasks. Its log
    says so after its last start, and `dev up` waits for it instead of calling it running."""
    from poolctl.starter.devstack import WORKER_STOPPING_LINE, worker_stopping

    worker_source = (Path(__file__).resolve().parents[1] / "worker.py").read_text()
    assert WORKER_STOPPING_LINE.decode() in worker_source  # the line the worker really logs
    log = tmp_path / "worker.log"
    assert worker_stopping(log) is False  # no log yet
    log.write_bytes(b"INFO worker polling task queue 'poolctl'\n")
    assert worker_stopping(log) is False
    log.write_bytes(log.read_bytes() + b"INFO " + WORKER_STOPPING_LINE + b"\n")
    assert worker_stopping(log) is True
    log.write_bytes(log.read_bytes() + b"INFO worker polling task queue 'poolctl'\n")  # started again
    assert worker_stopping(log) is False
