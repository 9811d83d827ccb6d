"""Run `poolctl` as a real process against a test's settings (to kill it mid-command), and find what it
and the pool leave behind: live local-server processes, a TCP connection to Temporal."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from poolctl.settings import Settings
from tests.processes import worker_env


def cli_env(settings: Settings) -> dict[str, str]:
    return worker_env(settings, POOLCTL_TEAM=settings.team, POOLCTL_ENV_FILE=os.devnull)


async def start_cli(settings: Settings, *args: str) -> asyncio.subprocess.Process:
    """`poolctl ARGS` as a child process (stdout and stderr piped)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "poolctl.starter.cli",
        *args,
        env=cli_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return " ".join((self.out + " " + self.err).split())  # Rich may wrap long lines


async def finish(proc: asyncio.subprocess.Process, timeout: float = 180) -> CliResult:
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


async def run_cli(settings: Settings, *args: str, timeout: float = 180) -> CliResult:
    return await finish(await start_cli(settings, *args), timeout)


def connected_to(pid: int, port: int) -> bool:
    """Does process `pid` hold an established TCP connection to 127.0.0.1:`port` (e.g. Temporal)?"""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return False
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            remote_port = int(cols[2].rsplit(":", 1)[1], 16)
            if cols[3] == "01" and remote_port == port and cols[9] in inodes:
                return True
    return False
