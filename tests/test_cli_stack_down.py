"""With Temporal unreachable, every command that needs it says so in one line, the same way, with how to
start it (real `poolctl` subprocesses; no SDK or Rust dump, no traceback, no internal diagnostic); `health`
shows the stored state as the last known one, with its age."""

from __future__ import annotations

import asyncio
import socket

import pytest
from temporalio.client import Client

from poolctl.settings import Settings
from tests.helpers import EMPTY_POOL_SPEC, POOLCTL, apply_yaml, settled
from tests.test_cli_waiting import cli_env

pytestmark = pytest.mark.temporal


def _dead_address() -> str:
    """127.0.0.1:PORT with nothing listening (a port the kernel just handed out and took back)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


async def _run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        POOLCTL, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


COMMANDS = [
    ["status"],
    ["status", "web"],
    ["policy", "list", "web"],
    ["policy", "show", "web", "cpu"],
    ["policy", "pause", "web", "cpu"],
    ["schedules"],
    ["scale", "web", "--desired", "1"],
    ["delete", "pool", "web", "-y"],
    ["apply", "-f", "examples/demo.yaml"],
]


async def test_commands_with_temporal_down_say_so_in_one_line_and_health_says_its_data_is_stored(
    client: Client, settings: Settings, worker: None
):
    await apply_yaml(client, settings, EMPTY_POOL_SPEC)
    await settled(client, settings, "web", 0)
    address = _dead_address()
    env = cli_env(settings) | {"POOLCTL_TEMPORAL_ADDRESS": address}
    expected = (
        f"error: cannot reach Temporal at {address} (connection refused); start it with: poolctl dev up"
    )
    results = []
    for i in range(0, len(COMMANDS), 3):  # a few at a time: the machine has 2 cores
        results += await asyncio.gather(*(_run(env, *args) for args in COMMANDS[i : i + 3]))
    for args, (code, out, err) in zip(COMMANDS, results, strict=True):
        assert (code, err.splitlines()) == (1, [expected]), (args, out, err)

    code, out, err = await _run(env, "health", "web")
    assert code == 0, (out, err)
    [line] = err.splitlines()  # no "a Temporal runtime was left behind" either
    assert line.startswith(f"warning: cannot reach Temporal at {address} (connection refused): ")
    assert "this is the last known state, stored " in line and " ago " in line
    assert "as stored" in out and "ago" in out
