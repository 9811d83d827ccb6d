"""One owner per pool (issue 8): `poolctl apply` and `poolctl delete pool` run as real processes, killed at
each of their steps (SIGKILL, or Ctrl-C with the worker stopped) and run again: the pool workflow, its
policies and the store always converge to the file, and no server process leaks."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from poolctl.domain.names import policy_workflow_id, pool_workflow_id
from poolctl.domain.pool_spec import PoolSpec
from poolctl.settings import Settings
from poolctl.store import inventory
from poolctl.store.db import migrate, session_scope
from poolctl.worker import build_worker
from tests.cli_process import connected_to, finish, run_cli, start_cli
from tests.helpers import apply_yaml, eventually, pool_view, settled
from tests.processes import local_server_pids

pytestmark = pytest.mark.temporal

# a policy whose metric source is down: it holds (MetricUnavailable), so the size is the file's
POLICY = """      - name: {name}
        type: custom
        strategy: threshold
        source: {{kind: http_json, url: "http://127.0.0.1:9/none", path: value}}
        threshold_up: 80
        threshold_down: 20
        evaluation_interval: 1
"""


def pool_yaml(team: str, desired: int, policies: tuple[str, ...] = (), name: str = "web") -> str:
    text = f"""team: {team}
pools:
  - name: {name}
    provider: local
    min_servers: 0
    max_servers: 6
    desired_servers: {desired}
"""
    if policies:
        text += "    policies:\n" + "".join(POLICY.format(name=p) for p in policies)
    return text


def stored_pool(settings: Settings, pool: str = "web") -> dict[str, Any] | None:
    with session_scope(settings.resolved_database_url) as s:
        row = inventory.find_pool(s, settings.team, pool)
        if row is None:
            return None
        return {
            "spec": row.spec,
            "desired": row.desired_servers,
            "policies": sorted(p.name for p in row.policies),
            "servers": sorted(r.id for r in inventory.list_servers(s, settings.team, pool)),
        }


async def running(client: Client, workflow_id: str) -> bool:
    try:
        desc = await client.get_workflow_handle(workflow_id).describe()
    except RPCError:
        return False
    return desc.status == WorkflowExecutionStatus.RUNNING


async def running_policies(
    client: Client, settings: Settings, names: set[str], pool: str = "web"
) -> set[str]:
    return {n for n in names if await running(client, policy_workflow_id(settings.team, pool, n))}


async def assert_converged(client: Client, settings: Settings, text: str) -> None:
    """Workflow, store, policies and server processes all say what the file says."""
    spec = PoolSpec.model_validate(
        next(p for p in __import__("yaml").safe_load(text)["pools"] if p["name"] == "web")
    )
    size = spec.initial_desired
    view = await settled(client, settings, "web", size, timeout=90)
    assert view.desired == size
    want = spec.model_dump(mode="json")
    row = await eventually(
        lambda: asyncio.to_thread(stored_pool, settings),
        lambda r: r is not None and r["spec"] == want and r["desired"] == size,
    )
    assert row is not None
    assert row["policies"] == sorted(p.name for p in spec.policies)
    assert row["servers"] == sorted(s.server_id for s in view.servers)
    every = {"a", "b", "c"}
    wanted = {p.name for p in spec.policies}
    await eventually(lambda: running_policies(client, settings, every), lambda names: names == wanted)
    assert len(local_server_pids(settings)) == size, "a leaked (or missing) server process"


async def test_issue_8_apply_killed_right_after_its_first_write_then_rerun_ends_at_the_files_size(
    client: Client, settings: Settings, worker, tmp_path: Path
):
    spec = tmp_path / "demo.yaml"
    spec.write_text(pool_yaml(settings.team, 3))
    await apply_yaml(client, settings, spec.read_text())
    await settled(client, settings, "web", 3, timeout=90)

    spec.write_text(pool_yaml(settings.team, 6))
    proc = await start_cli(settings, "apply", "-f", str(spec))
    # its first write took effect: the pool's workflow holds the new spec
    await eventually(
        lambda: pool_view(client, settings, "web"), lambda v: v is not None and v.desired == 6, interval=0.05
    )
    proc.send_signal(signal.SIGKILL)
    await proc.wait()

    again = await run_cli(settings, "apply", "-f", str(spec))
    assert again.code == 0, again.text
    assert f"pool {settings.team}/web: unchanged" in again.text
    await assert_converged(client, settings, spec.read_text())


async def test_worker_stopped_apply_interrupted_worker_back_apply_again_ends_at_the_files_size(
    client: Client, settings: Settings, tmp_path: Path
):
    migrate(settings.resolved_database_url)
    spec = tmp_path / "demo.yaml"
    async with build_worker(client, settings):
        await apply_yaml(client, settings, pool_yaml(settings.team, 1))
        await settled(client, settings, "web", 1, timeout=90)
    # the worker is stopped: apply of a changed file waits for it; the apply is killed while it waits
    # (SIGKILL: a closed terminal or a cancelled CI job)
    spec.write_text(pool_yaml(settings.team, 3, ("a",)))
    proc = await start_cli(settings, "apply", "-f", str(spec))
    port = int(settings.temporal_address.rsplit(":", 1)[1])
    await eventually(lambda: asyncio.to_thread(connected_to, proc.pid, port), bool, interval=0.1)
    proc.send_signal(signal.SIGKILL)
    assert (await finish(proc, timeout=30)).code != 0
    async with build_worker(client, settings):
        again = await run_cli(settings, "apply", "-f", str(spec))
        assert again.code == 0, again.text
        await assert_converged(client, settings, spec.read_text())


async def _kill_when(proc: asyncio.subprocess.Process, probe: Any, until: Any) -> None:
    """SIGKILL `proc` as soon as `until(await probe())` holds (if it is still running by then)."""
    await eventually(probe, until, timeout=90, interval=0.05)
    if proc.returncode is None:
        proc.send_signal(signal.SIGKILL)
    await proc.wait()


async def test_apply_killed_at_each_step_and_run_again_converges(
    client: Client, settings: Settings, worker, tmp_path: Path
):
    spec = tmp_path / "web.yaml"
    await apply_yaml(client, settings, pool_yaml(settings.team, 1))
    await settled(client, settings, "web", 1, timeout=90)

    def store() -> Any:
        return asyncio.to_thread(stored_pool, settings)

    steps = [
        # (the file, the step the apply is killed at)
        (
            pool_yaml(settings.team, 2, ("a",)),
            lambda: pool_view(client, settings, "web"),
            lambda v: v is not None and v.desired == 2,  # the workflow accepted the spec
        ),
        (
            pool_yaml(settings.team, 3, ("a", "b")),
            store,
            lambda r: r is not None and r["policies"] == ["a", "b"],  # the store has it
        ),
        (
            pool_yaml(settings.team, 2, ("c",)),
            lambda: running_policies(client, settings, {"c"}),
            lambda names: names == {"c"},  # the policies follow it
        ),
        (
            pool_yaml(settings.team, 4, ("c",)),
            lambda: pool_view(client, settings, "web"),
            lambda v: v is not None and v.scaling,  # the pool is scaling to it
        ),
    ]
    for text, probe, until in steps:
        spec.write_text(text)
        proc = await start_cli(settings, "apply", "-f", str(spec))
        await _kill_when(proc, probe, until)
        again = await run_cli(settings, "apply", "-f", str(spec))
        assert again.code == 0, again.text
        await assert_converged(client, settings, text)


async def test_delete_killed_at_each_step_and_run_again_leaves_nothing_behind(
    client: Client, settings: Settings, worker, tmp_path: Path
):
    pools = ["one", "two", "three"]
    for name in pools:
        await apply_yaml(client, settings, pool_yaml(settings.team, 2, ("a",), name=name))
    for name in pools:
        await settled(client, settings, name, 2, timeout=90)
        await eventually(lambda n=name: running_policies(client, settings, {"a"}, n), lambda s: s == {"a"})  # type: ignore[misc]

    async def status(pool: str) -> str | None:
        view = await pool_view(client, settings, pool)
        return None if view is None else view.status.value

    def stored_servers(pool: str) -> Any:
        return asyncio.to_thread(lambda: (stored_pool(settings, pool) or {"servers": []})["servers"])

    # killed once the workflow accepted the delete; killed once the first server is gone
    kill_at = {
        "one": (lambda: status("one"), lambda s: s == "deleting"),
        "two": (lambda: stored_servers("two"), lambda ids: len(ids) < 2),
    }
    for name, (probe, until) in kill_at.items():
        proc = await start_cli(settings, "delete", "pool", name, "--yes")
        await _kill_when(proc, probe, until)
    # the third pool's workflow is gone (terminated by hand) while the store still lists it: delete adopts
    await client.get_workflow_handle(pool_workflow_id(settings.team, "three")).terminate(reason="test")

    for name in pools:
        again = await run_cli(settings, "delete", "pool", name, "--yes")
        # a delete that finished while it was being killed says so; otherwise it completes now
        assert again.code == 0 or (again.code == 2 and "not found" in again.text), again.text
        result = await client.get_workflow_handle(pool_workflow_id(settings.team, name)).result()
        assert result == "deleted"
        assert stored_pool(settings, name) is None
        await eventually(lambda n=name: running_policies(client, settings, {"a"}, n), lambda s: s == set())  # type: ignore[misc]
    assert local_server_pids(settings) == set(), "a server process leaked"
    gone = await run_cli(settings, "delete", "pool", "one", "--yes")
    assert gone.code == 2 and "not found" in gone.text

    # a deleted pool can be applied again at once: its closed workflow still answers queries (until
    # Temporal's retention), and apply must not take the old run's "being deleted" for the new file's
    spec_file = tmp_path / "one-again.yaml"
    spec_file.write_text(pool_yaml(settings.team, 1, name="one"))
    applied = await run_cli(settings, "apply", "-f", str(spec_file))
    assert applied.code == 0, applied.text
    view = await settled(client, settings, "one", 1, timeout=90)
    assert view.desired == 1
    shown = await run_cli(settings, "status", "one")
    assert shown.code == 0 and "deleting" not in shown.text, shown.text
