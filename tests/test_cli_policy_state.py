"""Through the real CLI: policy signals print the state they led to (`paused (scale-in and scale-out)`,
`active (scale-in paused)`), `policy list` shows partial pauses, `--timeout` is accepted by `policy list|show`,
and every `--json` output writes its timestamps one way: ISO 8601 in UTC with `+00:00`, nested ones too."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from temporalio.client import Client
from typer.testing import CliRunner

from poolctl.settings import Settings, get_settings
from poolctl.starter.cli import app
from tests.helpers import apply_yaml, eventually, settled

pytestmark = pytest.mark.temporal

SPEC = """
pools:
  - {name: web, provider: fake, min_servers: 0, max_servers: 3, desired_servers: 1,
     policies: [{name: cpu, type: cpu, target: 50, evaluation_interval: 60}]}
"""
"""A pool of one fake server (one scaling event to show) with a CPU policy that evaluates once a minute."""

TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")


async def cli(*args: str) -> str:
    """`poolctl ARGS` in a thread (the CLI runs its own event loop), as a shell would; its stdout."""
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args))
    assert result.exit_code == 0, (args, result.output)
    return result.output


def timestamps(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [t for v in value.values() for t in timestamps(v)]
    if isinstance(value, list):
        return [t for v in value for t in timestamps(v)]
    return [value] if isinstance(value, str) and TIMESTAMP.match(value) else []


async def test_policy_signals_print_the_resulting_state_and_json_timestamps_are_utc_with_offset(
    client: Client, cli_env: Settings, worker: None, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("POOLCTL_TEAM", cli_env.team)
    get_settings.cache_clear()  # cli_env clears it again at the end
    me = f"policy {cli_env.team}/web/cpu"
    await apply_yaml(client, cli_env, SPEC)
    await settled(client, cli_env, "web", 1)

    paused = f"{me}: paused (scale-in and scale-out)\n"
    assert await cli("policy", "pause", "web", "cpu") == paused
    # the workflow tells the pool at once that the policy abstains; show and list say so (rich markup
    # swallowed the "[abstains]" label once)
    shown = await eventually(
        lambda: cli("policy", "show", "web", "cpu", "--timeout", "30"), lambda out: "Paused" in out
    )
    assert "(none, Paused) [abstains]: takes no part in the pool's vote" in shown
    assert "(abstains)" in await cli("policy", "list", "web", "--timeout", "30")
    assert await cli("policy", "toggle", "web", "cpu") == f"{me}: active\n"
    assert (
        await cli("policy", "pause-scale-in", "web", "cpu", "--timeout", "30")
        == f"{me}: active (scale-in paused)\n"
    )
    assert "active (scale-in paused)" in await cli("policy", "list", "web", "--timeout", "30")
    [listed] = json.loads(await cli("policy", "list", "web", "--json"))
    assert (listed["state"], listed["scale_in_paused"], listed["scale_out_paused"]) == (
        "active (scale-in paused)", True, False,
    )  # fmt: skip
    assert await cli("policy", "resume", "web", "cpu") == f"{me}: active\n"

    found: list[str] = []
    for args in (
        ["status"],
        ["status", "web"],
        ["events", "web"],
        ["policy", "show", "web", "cpu", "--timeout", "30"],
    ):
        found += timestamps(json.loads(await cli(*args, "--json")))
    assert len(found) >= 4, found  # status' last event, the event's start and end, the policy's times
    assert [t for t in found if not t.endswith("+00:00")] == []


def test_a_policy_command_on_a_missing_pool_or_policy_says_which_is_missing(
    cli_env: Settings, monkeypatch: pytest.MonkeyPatch
):
    from poolctl.starter.specfile import parse_spec
    from poolctl.store import inventory
    from poolctl.store.db import session_scope

    team = cli_env.team
    monkeypatch.setenv("POOLCTL_TEAM", team)
    get_settings.cache_clear()  # cli_env clears it again at the end
    with session_scope(cli_env.resolved_database_url) as s:  # the store lists web and its policy cpu
        inventory.apply_document(s, parse_spec(f"team: {team}\n" + SPEC, "spec"))

    def said(*args: str) -> str:
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == 2, (args, result.output)
        return " ".join(result.output.split())

    for command in (["pause"], ["resume"], ["toggle"], ["show"]):
        # it said "policy 'cpu' of pool .../nope has no running workflow (is it in the applied spec?)"
        assert said("policy", *command, "nope", "cpu") == f"error: pool 'nope' not found in team '{team}'"
        assert said("policy", *command, "web", "mem") == (
            f"error: pool {team}/web has no policy 'mem' (its policies: cpu)"
        )
    # the store lists both: no workflow runs them (no worker has run here)
    assert said("policy", "pause", "web", "cpu") == (
        f"error: policy 'cpu' of pool {team}/web has no running workflow (is it in the applied spec?)"
    )
