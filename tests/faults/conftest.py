"""The fault suite's shared parts: the summary table (printed at the end of every run that includes
tests/faults: fault, runs, actions lost, duplicate servers, orphans, final state), the invariant check
every fault test ends with, a private PostgreSQL server and a private dev stack (file-backed Temporal
server and worker) a test may stop and start."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select
from temporalio.client import Client

from poolctl.activities.providers.registry import get_provider, kill_all_local_servers
from poolctl.domain.names import pool_key
from poolctl.settings import Settings
from poolctl.starter import devstack
from poolctl.starter.processes import stop as stop_process
from poolctl.store.db import session_scope
from poolctl.store.models import ScalingEvent, Server
from poolctl.temporal_client import connect
from tests.backends import free_port
from tests.helpers import pool_view
from tests.processes import local_server_pids


@dataclass
class FaultRow:
    fault: str
    runs: int = 0
    lost: int = 0
    duplicates: int = 0
    orphans: int = 0
    final: list[str] = field(default_factory=list)


TABLE: dict[str, FaultRow] = {}


@dataclass
class Invariants:
    """What a fault must not break, counted (every count must be 0)."""

    lost: int  # desired servers missing, or scaling events never finished
    duplicates: int  # servers beyond the desired count
    orphans: int  # server processes no pool knows, or pool members with no process
    final: str

    def assert_clean(self) -> None:
        assert (self.lost, self.duplicates, self.orphans) == (0, 0, 0), self


async def check_pool(client: Client, settings: Settings, pool: str, desired: int) -> Invariants:
    """Workflow, provider, store and processes agree on exactly `desired` servers; every event finished."""
    view = await pool_view(client, settings, pool)
    members = {s.server_id for s in view.servers} if view else set()
    provider = get_provider("local", settings.state_dir)
    running = {
        s.server_id
        for s in await provider.list_servers(pool_key(settings.team, pool))
        if s.state.value == "running"
    }
    with session_scope(settings.resolved_database_url) as s:
        stored = set(s.scalars(select(Server.id).where(Server.state.in_(("pending", "running")))))
        unfinished = len(list(s.scalars(select(ScalingEvent.id).where(ScalingEvent.status == "running"))))
    pids = len(local_server_pids(settings))
    lost = max(0, desired - len(members)) + unfinished
    duplicates = max(0, len(members) - desired)
    orphans = len(running ^ members) + len(stored ^ members) + abs(pids - len(members))
    final = f"{len(members)}/{desired} {view.status.value if view else 'no workflow'}"
    return Invariants(lost=lost, duplicates=duplicates, orphans=orphans, final=final)


async def assert_invariants(  # type: ignore[no-untyped-def]
    client: Client, settings: Settings, pool: str, desired: int, fault: str, fault_record
) -> Invariants:
    """End of a fault test: check the invariants (`check_pool`), count the run in the table under
    `fault`, and fail unless every count is 0."""
    inv = await check_pool(client, settings, pool, desired)
    fault_record(fault, inv)
    inv.assert_clean()
    return inv


@pytest.fixture
def quick_recovery(settings: Settings) -> Settings:
    """Short provider retries, error backoff and drift interval, so a fault test runs in about its fault's length."""
    settings.scale_attempts = 2
    settings.retry_initial_interval_s = 0.2
    settings.error_retry_initial_s = 2.0
    settings.error_retry_max_s = 10.0
    settings.drift_interval_s = 2.0
    return settings


@pytest.fixture
def fault_record(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """`fault_record(name, invariants)`: count a run of a fault in the summary table."""

    def record(name: str, inv: Invariants) -> None:
        row = TABLE.setdefault(name, FaultRow(name))
        row.runs += 1
        row.lost += inv.lost
        row.duplicates += inv.duplicates
        row.orphans += inv.orphans
        row.final.append(inv.final)

    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    if not TABLE:
        return
    tr = terminalreporter
    tr.section("fault suite")
    header = f"{'fault':<62} {'runs':>4} {'lost':>4} {'dupl':>4} {'orph':>4}  final state"
    tr.write_line(header)
    for row in TABLE.values():
        finals = ", ".join(sorted(set(row.final)))
        tr.write_line(
            f"{row.fault:<62} {row.runs:>4} {row.lost:>4} {row.duplicates:>4} {row.orphans:>4}  {finals}"
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


@dataclass
class PrivatePostgres:
    """A PostgreSQL server of this test's own (initdb in a temp dir, run as the `postgres` user), so a
    test can stop and start it without touching anyone else's database."""

    bindir: Path
    datadir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=120
        )

    def start(self) -> None:
        self._as_postgres(
            str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-w", "-t", "60", "-l",
            str(self.datadir / "server.log"), "-o", f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.datadir}",
            "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-w", "-m", "fast", "stop")


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    bindir = _pg_bin()
    if bindir is None or shutil.which("runuser") is None or os.geteuid() != 0:
        pytest.skip("needs PostgreSQL's server binaries and root (to run them as the postgres user)")
    root = Path(tempfile.mkdtemp(prefix="poolctl-pg-"))
    datadir = root / "data"
    datadir.mkdir()
    shutil.chown(root, "postgres")
    shutil.chown(datadir, "postgres")
    pg = PrivatePostgres(bindir, datadir, _free_port())
    pg._as_postgres(str(bindir / "initdb"), "-D", str(datadir), "-A", "trust", "-U", "postgres")
    pg.start()
    try:
        yield pg
    finally:
        try:
            pg.stop()
        except subprocess.SubprocessError:
            pass
        time.sleep(0)  # nothing else: the data dir goes with the temp dir
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class PrivateStack:
    """A dev stack of the test's own, as `poolctl dev up` runs it: a file-backed Temporal dev server and a
    worker on private ports, state dir and SQLite file, so a test can stop and start its Temporal server.
    `client` is connected to it (a new one after `start_temporal`)."""

    settings: Settings
    client: Client

    async def stop_temporal(self) -> None:
        """Stop the Temporal server (the pid in its pid file: SIGTERM, SIGKILL after 20 s)."""
        tpid = int((self.settings.state_dir / "pids" / "temporal.pid").read_text())
        assert await asyncio.to_thread(stop_process, tpid, 20)

    async def start_temporal(self) -> None:
        """Start the Temporal server again on the same database file (`dev up`; the worker kept running)."""
        await asyncio.to_thread(devstack.up, self.settings, say=lambda m: None)
        self.client = await connect(self.settings)


@pytest.fixture
async def private_stack(settings: Settings, tmp_path: Path) -> AsyncIterator[PrivateStack]:
    own = settings.model_copy(
        update={
            "state_dir": tmp_path / "stack",
            "database_url": f"sqlite:///{tmp_path / 'stack.db'}",
            "temporal_address": f"127.0.0.1:{free_port()}",
            "temporal_ui_port": free_port(),
            "worker_metrics_port": 0,
            "activity_timeout_s": 8.0,
        }
    )
    own.ensure_state_dir()
    try:
        await asyncio.to_thread(devstack.up, own, say=lambda m: None)
        yield PrivateStack(own, await connect(own))
    finally:
        await asyncio.to_thread(devstack.down, own, say=lambda m: None)
        kill_all_local_servers(own.state_dir)
