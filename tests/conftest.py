"""Shared fixtures: a real Temporal dev server for the session, per-test settings (state dir, SQLite or
PostgreSQL database, task queue) and an in-process worker."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa_core
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from poolctl import search_attributes
from poolctl.payload_codec import new_key_text
from poolctl.settings import Settings
from poolctl.temporal_client import DATA_CONVERTER, rebuild_client

VENV_BIN = Path(sys.executable).parent
# One payload key for the whole session (the session's Temporal client, in-process and subprocess workers,
# CLI runs): each test's own state dir would otherwise generate its own key (poolctl.payload_codec).
os.environ.setdefault("POOLCTL_PAYLOAD_KEY", new_key_text())
# Likewise one team auth key (poolctl.team_auth): the session's client, workers and CLI runs hold it, so
# they act as an operator for whatever team a test names; tests of team isolation use team tokens.
os.environ.setdefault("POOLCTL_TEAM_AUTH_KEY", new_key_text())
PG_URL = os.environ.get("POOLCTL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_reachable() -> str | None:
    try:
        engine = sa_core.create_engine(PG_URL)
        with engine.connect() as c:
            c.execute(sa_core.text("select 1"))
        engine.dispose()
        return None
    except Exception as e:  # noqa: BLE001 - any failure means "not reachable"
        return str(e).splitlines()[0]


PG_PROBLEM = _pg_reachable()


def pytest_report_header(config: pytest.Config) -> list[str]:
    if PG_PROBLEM:
        return [
            f"PostgreSQL NOT reachable at {PG_URL}: PostgreSQL halves of the tests are SKIPPED ({PG_PROBLEM})"
        ]
    return [f"PostgreSQL: {PG_URL}"]


@contextmanager
def fresh_pg_schema() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL schema, dropped on exit (skips the test when none is reachable)."""
    if PG_PROBLEM:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {PG_PROBLEM}")
    schema = f"poolctl_test_{uuid.uuid4().hex[:8]}"
    engine = sa_core.create_engine(PG_URL)
    with engine.begin() as c:
        c.execute(sa_core.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        from poolctl.store.db import dispose_all

        dispose_all()
        with engine.begin() as c:
            c.execute(sa_core.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(scope="session")
def pg_schema_url() -> Iterator[str]:
    """A fresh PostgreSQL schema for this test session, dropped at the end."""
    with fresh_pg_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run the test once on SQLite and once on PostgreSQL (a schema shared by the session's tests)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'poolctl.db'}"
    return request.getfixturevalue("pg_schema_url")


@pytest.fixture(params=["sqlite", "postgresql"])
def own_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """`db_url` for a test that counts every row of a table: an empty store of its own on both."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'poolctl.db'}"
        return
    with fresh_pg_schema() as url:
        yield url


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(VENV_BIN / "temporal"),
        search_attributes=search_attributes.ALL,
        data_converter=DATA_CONVERTER,
        dev_server_extra_args=["--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=200"],
    )
    # the session's client as poolctl builds one: headers encrypted, messages signed with the team auth key
    yield WorkflowEnvironment.from_client(rebuild_client(env.client, Settings()))
    record_to = os.environ.get("POOLCTL_RECORD_HISTORIES")
    if record_to:  # `make histories`: keep this session's workflow runs for the replay tests
        from tests.replay import harvest

        written = await harvest(env.client, Path(record_to))
        print(f"\nrecorded {len(written)} histories into {record_to}")
    await env.shutdown()


@pytest.fixture
def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture
def settings(tmp_path: Path, temporal_env: WorkflowEnvironment) -> Iterator[Settings]:
    """Per-test settings: own state dir, SQLite file and task queue; fast retries and reconcile."""
    target = temporal_env.client.service_client.config.target_host
    s = Settings(
        state_dir=tmp_path / "state",
        database_url=f"sqlite:///{tmp_path / 'poolctl.db'}",
        temporal_address=target,
        task_queue=f"tq-{uuid.uuid4().hex[:8]}",
        team=f"t{uuid.uuid4().hex[:6]}",
        reconcile_interval_s=2.0,
        retry_initial_interval_s=0.2,
        activity_timeout_s=20.0,
    )
    s.ensure_state_dir()
    yield s
    from poolctl.activities.providers.registry import clear_provider_cache, kill_all_local_servers

    kill_all_local_servers(s.state_dir)
    clear_provider_cache()


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """`settings` exported as POOLCTL_* variables, for commands run through the CLI (in or out of process)."""
    from poolctl.settings import get_settings

    monkeypatch.setenv("POOLCTL_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("POOLCTL_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("POOLCTL_TEMPORAL_ADDRESS", settings.temporal_address)
    monkeypatch.setenv("POOLCTL_TASK_QUEUE", settings.task_queue)
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


@pytest.fixture
async def worker(client: Client, settings: Settings) -> AsyncIterator[None]:
    from poolctl.store.db import migrate
    from poolctl.worker import build_worker

    migrate(settings.resolved_database_url)
    async with build_worker(client, settings):
        yield
    from poolctl.activities.probes import close_shared_prober

    await close_shared_prober()  # as run_worker does: the probe loops' aiohttp session


@pytest.fixture
async def backends() -> AsyncIterator[list]:
    """Three tiny HTTP backends (tests/backends.py) that answer with their own id."""
    from tests.backends import Backend

    bs = [Backend(f"s{i}") for i in range(3)]
    for b in bs:
        await b.start()
    yield bs
    for b in bs:
        b.release.set()
        await b.stop()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real moto server (AWS API emulator, tests/moto_server.py) for the session; its URL."""
    from tests.moto_server import start_moto

    server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server.url
    server.stop()


@pytest.fixture
def aws_endpoint(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The moto server's URL, with dummy AWS credentials and region in the environment for this test."""
    from tests.moto_server import aws_test_env

    aws_test_env(monkeypatch)
    return moto_server


@pytest.fixture(scope="session")
def moto_ami(moto_server: str) -> str:
    """An AMI id the moto server knows (it ships Amazon's public images)."""
    from tests.moto_server import image_id

    return image_id(moto_server)
