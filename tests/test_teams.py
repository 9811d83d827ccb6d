"""Teams kept apart (docs/security.md#teams): a caller of team A cannot list, read, scale, pause or delete
team B's objects, neither through `poolctl` (checked in the CLI from the caller's team token) nor with a
raw Temporal client (checked by the worker's interceptor inside each workflow), and nothing changes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import traceback
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import HeaderCodecBehavior
from typer.testing import CliRunner

from poolctl.domain.decision import Direction, ReasonCode, Recommendation
from poolctl.domain.names import pool_workflow_id
from poolctl.domain.pool_spec import PoolSpec
from poolctl.domain.pool_state import ApplyRequest, PoolInput, ScaleRequest
from poolctl.payload_codec import parse_key
from poolctl.settings import Settings
from poolctl.starter import policy_ops, pool_ops
from poolctl.starter.cli import app
from poolctl.store import queries
from poolctl.store.db import session_scope
from poolctl.team_auth import TeamCredentials, TokenCredentials, issue_token
from poolctl.team_interceptor import TeamClientInterceptor
from poolctl.temporal_client import DATA_CONVERTER
from poolctl.workflows.policy import PolicyWorkflow
from poolctl.workflows.pool import PoolWorkflow
from tests.helpers import apply_yaml, eventually, pool_view, settled

pytestmark = pytest.mark.temporal

SPEC = """
pools:
  - name: web
    provider: fake
    min_servers: 0
    max_servers: 5
    desired_servers: 1
    policies:
      - name: cpu
        type: cpu
        target: 50
        evaluation_interval: 60
"""


def key() -> bytes:
    return parse_key(os.environ["POOLCTL_TEAM_AUTH_KEY"], "POOLCTL_TEAM_AUTH_KEY")


def token(team: str) -> str:
    """`team`'s genuine token (issued with the session's team auth key, as `poolctl team token` does)."""
    return issue_token(key(), team)


def forged(team: str) -> str:
    """A token that names `team` but was not issued with the key."""
    return f"{team}:{os.urandom(32).hex()}"


def raw_client(client: Client, credentials: TeamCredentials | None) -> Client:
    """A Temporal client that knows the payload key (as every poolctl user does) and signs with
    `credentials`, or not at all: what anyone could write without poolctl."""
    return Client(
        client.service_client,
        namespace=client.namespace,
        data_converter=DATA_CONVERTER,
        header_codec_behavior=HeaderCodecBehavior.CODEC,
        interceptors=[TeamClientInterceptor(credentials)] if credentials else [],
    )


@pytest.fixture
async def team_b_pool(client: Client, settings: Settings, worker) -> Settings:
    """Team B (`settings.team`) has pool web at 1 server, with policy cpu, applied by an operator."""
    await apply_yaml(client, settings, SPEC)
    await settled(client, settings, "web", 1)
    return settings


OUTSIDERS = {
    "no-credentials": lambda b: None,
    "team-a-token": lambda b: TokenCredentials.from_token(token(f"a{uuid.uuid4().hex[:6]}")),
    "forged-team-b-token": lambda b: TokenCredentials.from_token(forged(b)),
}


# ---- Temporal level ------------------------------------------------------------------------------


@pytest.mark.parametrize("outsider", sorted(OUTSIDERS))
async def test_raw_client_without_team_b_credentials_cannot_scale_read_pause_or_delete_team_b(
    outsider: str, client: Client, team_b_pool: Settings, caplog: pytest.LogCaptureFixture
):
    b = team_b_pool.team
    raw = raw_client(client, OUTSIDERS[outsider](b))
    pool = raw.get_workflow_handle(pool_workflow_id(b, "web"))
    caplog.set_level(logging.WARNING)

    # update: refused by the validator (scale) or the handler (delete has no validator)
    for update, args in (
        (PoolWorkflow.scale, [ScaleRequest(desired=4, reason="x", request_id="r1")]),
        (PoolWorkflow.delete, []),
    ):
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await pool.execute_update(update, *args)  # type: ignore[call-overload]
        assert "refused:" in str(refused.value.cause)
    # query: fails
    with pytest.raises(WorkflowQueryFailedError):  # its message is encrypted: the worker logs why
        await pool.query(PoolWorkflow.status)
    assert "team check refused a query: query status" in caplog.text
    # signals: dropped (a signal cannot be refused), logged by the worker
    rec = Recommendation(
        policy="cpu",
        at=datetime.now(UTC),
        desired=5,
        direction=Direction.UP,
        reason=ReasonCode.TARGET_TRACKING,
    )
    await pool.signal(PoolWorkflow.recommend, rec)
    await raw.get_workflow_handle(f"policy/{b}/web/cpu").signal(PolicyWorkflow.pause)
    await eventually(
        lambda: _async(lambda: caplog.text.count("team check dropped a signal")), lambda n: n >= 2, timeout=60
    )

    # nothing changed: size, desired, policy still running
    view = await pool_view(client, team_b_pool, "web")
    assert view is not None and (view.desired, view.current) == (1, 1)
    state = await policy_ops.query_policy(client, b, "web", "cpu")
    assert state is not None and not state.paused
    assert (await client.get_workflow_handle(pool_workflow_id(b, "web")).describe()).status == (
        WorkflowExecutionStatus.RUNNING
    )


async def _async(fn):  # type: ignore[no-untyped-def]
    return fn()


async def test_team_a_token_cannot_create_a_pool_in_team_b_nor_smuggle_team_b_into_its_own(
    client: Client, team_b_pool: Settings
):
    b, a = team_b_pool.team, f"a{uuid.uuid4().hex[:6]}"
    raw = raw_client(client, TokenCredentials.from_token(token(a)))
    # update-with-start of a new pool in team B: the update is refused and the new run fails at once
    spec = PoolSpec(name="evil", provider="fake", min_servers=0, max_servers=2, desired_servers=2)
    with pytest.raises(pool_ops.RequestRefused, match=f"credentials of team {a}, but workflow pool/{b}/evil"):
        await pool_ops.apply_pool(raw, team_b_pool, b, spec)
    run = client.get_workflow_handle(pool_workflow_id(b, "evil"))
    with pytest.raises(WorkflowFailureError) as failed:
        await run.result()
    assert "refused:" in str(failed.value.cause)
    # a pool workflow whose id says team A but whose input says team B
    smuggled = await raw.start_workflow(
        PoolWorkflow.run,
        PoolInput(team=b, spec=spec, runtime=pool_ops.runtime_from(team_b_pool)),
        id=pool_workflow_id(a, "evil"),
        task_queue=team_b_pool.task_queue,
    )
    with pytest.raises(WorkflowFailureError) as failed:
        await smuggled.result()
    assert f"input is team {b}'s" in str(failed.value.cause)
    with session_scope(team_b_pool.resolved_database_url) as s:
        assert queries.find_pool(s, b, "evil") is None and queries.find_pool(s, a, "evil") is None
        assert [p.name for p in queries.list_pools(s, b)] == ["web"]


async def test_team_b_token_acts_on_team_b(client: Client, team_b_pool: Settings):
    b = team_b_pool.team
    raw = raw_client(client, TokenCredentials.from_token(token(b)))
    accepted = await pool_ops.request_scale(raw, b, "web", 2, "team b scales its own pool")
    assert accepted.desired == 2
    await settled(client, team_b_pool, "web", 2)
    assert (await pool_ops.query_status(raw, b, "web")) is not None
    refusal = await raw.get_workflow_handle(pool_workflow_id(b, "web")).query(
        PoolWorkflow.apply_refusal, ApplyRequest(team=b, spec=PoolSpec(name="web", provider="fake"))
    )
    assert refusal is None


# ---- CLI level -----------------------------------------------------------------------------------


@pytest.fixture
def as_team(cli_env: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """`as_team(token)`: run the next CLI commands with POOLCTL_TEAM_TOKEN=token."""
    from poolctl.settings import get_settings

    def use(tok: str) -> None:
        monkeypatch.setenv("POOLCTL_TEAM_TOKEN", tok)
        get_settings.cache_clear()

    yield use
    get_settings.cache_clear()


async def cli(*args: str) -> tuple[int, str]:
    """Run `poolctl ARGS` in process (in a thread: the command runs its own event loop)."""
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args))
    if result.exit_code not in (0, 2) and result.exception is not None:  # show what went wrong
        traceback.print_exception(result.exception)
    return result.exit_code, result.output


async def test_cli_with_team_a_token_cannot_list_read_scale_pause_or_delete_team_b(
    client: Client, team_b_pool: Settings, as_team, tmp_path: Path
):
    b, a = team_b_pool.team, f"a{uuid.uuid4().hex[:6]}"
    as_team(token(a))
    code, out = await cli("status", "--json")
    assert code == 0 and json.loads(out) == [], out  # team B's pool is not listed
    code, out = await cli("balancer", "list", "--json")
    assert code == 0 and json.loads(out) == []
    spec = tmp_path / "b.yaml"
    spec.write_text(f"team: {b}\n" + SPEC)
    refused = f"team {b}: refused, your team token (POOLCTL_TEAM_TOKEN) is for team {a}"
    for args in (
        ["status", "web", "--team", b],
        ["servers", "web", "--team", b],
        ["events", "web", "--team", b],
        ["health", "web", "--team", b],
        ["policy", "list", "web", "--team", b],
        ["policy", "show", "web", "cpu", "--team", b],
        ["scale", "web", "--desired", "3", "--team", b, "--no-wait"],
        ["policy", "pause", "web", "cpu", "--team", b],
        ["delete", "pool", "web", "--team", b, "--yes"],
        ["apply", "-f", str(spec), "--no-wait"],
        ["server", "add", "web", "127.0.0.1:9", "--team", b],
        ["server", "remove", "web", "127.0.0.1:9", "--team", b],
    ):
        code, out = await cli(*args)
        assert code == 2, (args, out)
        assert out.strip().splitlines() == [f"error: {refused}"], (args, out)
    # without --team the caller's own team is meant: team A has no pool web
    code, out = await cli("status", "web")
    assert code == 2 and f"team '{a}'" in out and "not found" in out, out
    code, out = await cli("server", "add", "web", "127.0.0.1:9")  # not POOLCTL_TEAM's (team B's) pool
    assert code == 2 and f"pool 'web' not found in team '{a}'" in out and "refused" not in out, out

    # nothing changed in team B
    view = await pool_view(client, team_b_pool, "web")
    assert view is not None and (view.desired, view.current) == (1, 1)
    state = await policy_ops.query_policy(client, b, "web", "cpu")
    assert state is not None and not state.paused


async def test_cli_with_team_b_token_acts_on_team_b_and_a_forged_one_is_refused_by_the_worker(
    client: Client, team_b_pool: Settings, as_team
):
    b = team_b_pool.team
    as_team(token(b))
    code, out = await cli("status", "--json")
    assert code == 0 and [(p["team"], p["pool"]) for p in json.loads(out)] == [(b, "web")], out
    code, out = await cli("scale", "web", "--desired", "2", "--timeout", "60")
    assert code == 0, out
    code, out = await cli("policy", "pause", "web", "cpu")
    assert code == 0, out
    await eventually(
        lambda: policy_ops.query_policy(client, b, "web", "cpu"), lambda s: s is not None and s.paused
    )

    # a token naming team B that the key did not issue passes the CLI (which has no key) but not the worker
    as_team(forged(b))
    code, out = await cli("scale", "web", "--desired", "3", "--no-wait")
    assert code == 2 and "refused:" in out, out
    code, out = await cli("status", "web")
    assert code == 2 and "refused:" in out, out
    view = await pool_view(client, team_b_pool, "web")
    assert view is not None and view.desired == 2


async def test_team_token_is_issued_by_the_key_holder_only(cli_env: Settings, as_team):
    code, out = await cli("team", "token", "ops")
    assert code == 0 and out.strip() == token("ops")
    code, out = await cli("team", "whoami")
    assert code == 0 and "operator" in out
    as_team(token("ops"))
    code, out = await cli("team", "whoami")
    assert code == 0 and "team ops" in out
    code, out = await cli("team", "token", "other")
    assert code == 2 and "cannot issue tokens" in out
    as_team("not-a-token")
    code, out = await cli("status")
    assert code == 2 and "POOLCTL_TEAM_TOKEN: not a team token" in out
