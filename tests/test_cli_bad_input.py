"""Bad input through the real `poolctl` CLI: one clear message naming file, field and problem, exit code 2,
nothing written to the store and no workflow started."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.client import Client
from typer.testing import CliRunner

from poolctl.settings import Settings
from poolctl.starter.cli import app
from poolctl.store import inventory
from poolctl.store.db import session_scope

pytestmark = pytest.mark.temporal

CASES = {
    "unknown_field": (
        "pools:\n  - name: web\n    colour: blue\n",
        r"pools\[1\] \(web\)\.colour: unknown field",
    ),
    "min_above_max": (
        "pools:\n  - name: web\n    min_servers: 5\n    max_servers: 2\n",
        r"pools\[1\] \(web\): min_servers \(5\) is greater than max_servers \(2\)",
    ),
    "desired_out_of_range": (
        "pools:\n  - name: web\n    min_servers: 1\n    max_servers: 3\n    desired_servers: 9\n",
        r"desired_servers \(9\) is outside \[min_servers, max_servers\] = \[1, 3\]",
    ),
    "negative_count": (
        "pools:\n  - name: web\n    min_servers: -1\n",
        r"pools\[1\] \(web\)\.min_servers: Input should be greater than or equal to 0",
    ),
    "malformed_yaml": ("pools:\n  - name: web\n   min_servers: [1\n", r"malformed YAML"),
    "unknown_provider": (
        "pools:\n  - name: web\n    provider: gcp\n",
        r"pools\[1\] \(web\)\.provider: Input should be 'local', 'fake', 'aws' or 'static'",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_spec_is_refused_with_file_and_field_and_changes_nothing(
    case: str, cli_env: Settings, tmp_path: Path, client: Client
):
    text, pattern = CASES[case]
    spec = tmp_path / f"{case}.yaml"
    # a valid pool in the same file must not be applied either (all-or-nothing)
    spec.write_text(
        f"team: {cli_env.team}\n"
        + text.replace("pools:\n", "pools:\n  - name: good\n    min_servers: 0\n", 1)
    )
    result = CliRunner().invoke(app, ["apply", "-f", str(spec), "--no-wait"])
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())  # Rich may wrap long lines
    assert str(spec) in out
    import re

    assert re.search(pattern, out), out
    with session_scope(cli_env.resolved_database_url) as s:
        assert inventory.list_pools(s, cli_env.team) == []

    async def started() -> list[str]:
        return [w.id async for w in client.list_workflows(f'TeamId = "{cli_env.team}"')]

    assert asyncio.run(started()) == []


def test_missing_file_is_a_clear_error(cli_env: Settings, tmp_path: Path):
    result = CliRunner().invoke(app, ["apply", "-f", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml" in result.output and "cannot read" in result.output


def test_validate_accepts_the_demo_spec():
    result = CliRunner().invoke(app, ["validate", "-f", "examples/demo.yaml"])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


def test_unknown_balancer_is_one_line_that_says_where_it_looked(cli_env: Settings):
    result = CliRunner().invoke(app, ["lb", "stats", "nope", "--pool", "web"])
    assert result.exit_code == 2, result.output
    assert " ".join(result.output.split()) == (
        "error: load balancer 'nope' not found in pool 'web' (any team; poolctl lb list lists them)"
    )


def test_balancer_serve_on_a_taken_port_or_a_missing_file_is_one_line(cli_env: Settings, tmp_path: Path):
    import socket

    with socket.socket() as taken, socket.socket() as free:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        free.bind(("127.0.0.1", 0))
        port, admin = taken.getsockname()[1], free.getsockname()[1]
        free.close()  # a free admin port: only the listen port is taken
        spec = tmp_path / "lb.yaml"
        spec.write_text(f"{{name: front, port: {port}, admin_port: {admin}}}\n")
        result = CliRunner().invoke(app, ["balancer", "serve", "-f", str(spec), "--no-uvloop"])
    assert result.exit_code == 1, result.output
    assert " ".join(result.output.split()) == (
        f"error: balancer front: cannot serve on 127.0.0.1:{port} (admin 127.0.0.1:{admin}): Address already "
        "in use (does the dev stack already run it? poolctl dev status)"
    )
    result = CliRunner().invoke(app, ["balancer", "serve", "-f", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {tmp_path / 'nope.yaml'}: cannot read: No such file or directory"


def test_delete_of_a_missing_pool_says_not_found_before_asking_and_an_existing_one_is_still_confirmed(
    cli_env: Settings,
):
    team = cli_env.team
    # no tty and no --yes: the missing pool is said first (it used to answer "Aborted." with exit 1)
    result = CliRunner().invoke(app, ["delete", "pool", "nope", "--team", team])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: pool 'nope' not found in team '{team}'"

    from poolctl.domain.pool_spec import PoolSpec, SpecDocument

    with session_scope(cli_env.resolved_database_url) as s:  # a pool the store lists: asked, answered no
        inventory.apply_document(s, SpecDocument(team=team, pools=[PoolSpec(name="web", provider="fake")]))
    result = CliRunner().invoke(app, ["delete", "pool", "web", "--team", team], input="n\n")
    assert result.exit_code == 1, result.output
    assert f"Delete pool {team}/web and terminate all its servers?" in result.output
    # no answer at all (stdin not a terminal, nothing on it): one line saying what to do, not "Aborted."
    result = CliRunner().invoke(app, ["delete", "pool", "web", "--team", team])
    assert result.exit_code == 2, result.output
    assert result.output.strip().endswith(
        f"error: delete pool {team}/web: no answer on stdin (not a terminal): add --yes to delete without asking"
    )
    with session_scope(cli_env.resolved_database_url) as s:  # a static pool's servers are left running
        inventory.apply_document(
            s,
            SpecDocument(
                team=team,
                pools=[PoolSpec(name="legacy", provider="static", servers=[{"address": "127.0.0.1:9"}])],
            ),
        )
    result = CliRunner().invoke(app, ["delete", "pool", "legacy", "--team", team], input="n\n")
    assert (
        f"Delete pool {team}/legacy and deregister its servers (static: they are left running)?"
        in result.output
    )


def test_haproxy_config_of_a_builtin_balancer_is_refused_in_one_line(cli_env: Settings):
    from poolctl.domain.balancer_spec import LoadBalancerSpec
    from poolctl.domain.pool_spec import PoolSpec, SpecDocument

    front = LoadBalancerSpec(name="front", port=18080)  # driver builtin (the default)
    doc = SpecDocument(
        team=cli_env.team, pools=[PoolSpec(name="web", provider="fake", load_balancers=[front])]
    )
    with session_scope(cli_env.resolved_database_url) as s:
        inventory.apply_document(s, doc)
    result = CliRunner().invoke(app, ["balancer", "haproxy-config", "front", "--pool", "web"])
    assert result.exit_code == 2, result.output
    assert " ".join(result.output.split()) == (
        "error: balancer front is built-in (driver builtin): haproxy-config is for haproxy balancers "
        "(driver: haproxy); poolctl balancer serve runs a built-in one"
    )
