"""Apply merges like `kubectl apply` (issue 14): the pure rule, then end to end on real servers — a size set
by hand or by a policy survives a re-apply with an unrelated edit, a changed `desired_servers` moves the
pool, and a paused policy stays paused unless `is_active` changed in the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import Client

from poolctl.domain.apply_merge import apply_refusal, merge_apply
from poolctl.domain.pool_spec import PoolSpec
from poolctl.settings import Settings
from poolctl.starter import policy_ops, pool_ops
from tests.cli_process import run_cli
from tests.helpers import apply_yaml, eventually, pool_view, settled
from tests.policy_helpers import CpuPinner, policy_state


def spec(**kw: object) -> PoolSpec:
    return PoolSpec.model_validate({"name": "web", "min_servers": 1, "max_servers": 10, **kw})


def test_first_apply_takes_the_files_size() -> None:
    plan = merge_apply(None, spec(desired_servers=3), desired=1, desired_set_by="spec")
    assert (plan.action, plan.desired, plan.changes, plan.kept) == ("created", 3, [], [])


def test_unrelated_edit_keeps_a_size_someone_else_set() -> None:
    plan = merge_apply(
        spec(desired_servers=2),
        spec(desired_servers=2, server_weight=2),
        desired=6,
        desired_set_by="policy cpu-target",
    )
    assert plan.action == "updated" and plan.desired == 6
    assert plan.kept == ["desired 6 kept (set by policy cpu-target)"]
    assert plan.changes == ["server_weight 1 → 2"]


def test_changed_desired_servers_moves_the_pool() -> None:
    plan = merge_apply(spec(desired_servers=2), spec(desired_servers=4), desired=6, desired_set_by="operator")
    assert (plan.desired, plan.desired_set_by, plan.kept) == (4, "spec", [])
    assert plan.changes == ["desired_servers 2 → 4"]


def test_kept_size_is_still_clamped_to_new_bounds() -> None:
    plan = merge_apply(
        spec(desired_servers=2), spec(desired_servers=2, max_servers=5), desired=6, desired_set_by="operator"
    )
    assert plan.desired == 5
    assert "desired 6 → 5 (clamped to 1..5; was set by operator)" in plan.changes


def test_same_file_again_is_unchanged() -> None:
    plan = merge_apply(spec(desired_servers=2), spec(desired_servers=2), desired=2, desired_set_by="spec")
    assert (plan.action, plan.changes, plan.kept) == ("unchanged", [], [])


def test_refusals_name_the_field() -> None:
    current = spec(provider="fake")
    common = {"team": "t", "current": current, "deleting": False, "request_team": "t"}
    assert apply_refusal(servers=0, new=spec(provider="local"), **common) is None  # type: ignore[arg-type]
    field, msg = apply_refusal(servers=2, new=spec(provider="local"), **common)  # type: ignore[arg-type,misc]
    assert field == "provider" and "cannot change provider from 'fake' to 'local'" in msg
    other = PoolSpec.model_validate({"name": "api"})
    assert apply_refusal(servers=0, new=other, **common)[0] == "name"  # type: ignore[arg-type,index]


POOL = """team: {team}
pools:
  - name: web
    provider: local
    min_servers: 1
    max_servers: 4
    desired_servers: {desired}
    server_weight: {weight}
"""


@pytest.mark.temporal
async def test_reapply_keeps_a_size_set_by_hand_and_follows_a_changed_desired_servers(
    client: Client, settings: Settings, worker, tmp_path: Path
):
    f = tmp_path / "web.yaml"
    f.write_text(POOL.format(team=settings.team, desired=2, weight=1))
    assert (await run_cli(settings, "apply", "-f", str(f))).code == 0
    await settled(client, settings, "web", 2)
    await pool_ops.request_scale(client, settings.team, "web", 4, "manual scale")
    before = await settled(client, settings, "web", 4)

    f.write_text(POOL.format(team=settings.team, desired=2, weight=2))
    again = await run_cli(settings, "apply", "-f", str(f))
    assert again.code == 0, again.text
    assert "desired 4 kept (set by operator); server_weight 1 → 2" in again.text
    view = await settled(client, settings, "web", 4)
    assert view.seq == before.seq, "a re-apply with an unrelated edit must not scale the pool"

    f.write_text(POOL.format(team=settings.team, desired=3, weight=2))
    moved = await run_cli(settings, "apply", "-f", str(f))
    assert moved.code == 0 and "desired_servers 2 → 3" in moved.text, moved.text
    await settled(client, settings, "web", 3)


POLICY_POOL = """
pools:
  - name: web
    provider: local
    min_servers: 1
    max_servers: 3
    desired_servers: 1
    server_weight: {weight}
    policies:
      - name: cpu
        type: cpu
        threshold_up: {up}
        threshold_down: 10
        evaluation_interval: 1
        scale_out_cooldown_s: 0
        scale_in_cooldown_s: 0
        stabilization_window_s: 0
        is_active: {active}
"""


@pytest.mark.temporal
async def test_reapply_keeps_a_size_a_policy_set_and_a_paused_policy_stays_paused(
    client: Client, settings: Settings, worker
):
    def text(weight: int, active: bool = True, up: int = 70) -> str:
        return POLICY_POOL.format(weight=weight, active=str(active).lower(), up=up)

    await apply_yaml(client, settings, text(1))
    await settled(client, settings, "web", 1)
    pinner = CpuPinner(settings, "web", 90.0)
    async with pinner.running():  # above threshold_up: the policy scales the pool out to max_servers
        await eventually(
            lambda: pool_view(client, settings, "web"),
            lambda v: v is not None and v.desired == 3 and v.current == 3 and not v.scaling,
            timeout=60,
        )
        await pinner.set(50.0)  # between the thresholds: the policy holds
        before = await settled(client, settings, "web", 3)
        [outcome] = await apply_yaml(client, settings, text(2))
        assert outcome.kept == ["desired 3 kept (set by policy cpu)"]
        assert outcome.changes == ["server_weight 1 → 2"]
        view = await settled(client, settings, "web", 3)
        assert view.seq == before.seq and view.desired == 3

        # paused by signal: a re-apply that edits the policy elsewhere leaves it paused
        await policy_ops.signal_policy(client, settings.team, "web", "cpu", "pause")
        await eventually(
            lambda: policy_state(client, settings, "web", "cpu"), lambda s: s is not None and s.paused
        )
        await apply_yaml(client, settings, text(2, up=75))
        state = await eventually(
            lambda: policy_state(client, settings, "web", "cpu"),
            lambda s: s is not None and s.spec.get("threshold_up") == 75,
        )
        assert state.paused and state.status == "paused"
        # is_active changed in the file: false -> true resumes it
        await apply_yaml(client, settings, text(2, active=False, up=75))
        await apply_yaml(client, settings, text(2, active=True, up=75))
        resumed = await eventually(
            lambda: policy_state(client, settings, "web", "cpu"), lambda s: s is not None and not s.paused
        )
        assert resumed.status == "active"
