"""PoolWorkflow: the single writer of a pool's capacity. It takes manual scale requests (an update), spec
changes and (later) policy recommendations, reconciles the pool to its desired size one ScalePoolWorkflow
at a time, mirrors its status to the store and the Temporal UI, and continues-as-new with its state."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from poolctl import search_attributes as sa
    from poolctl.activities.inventory import InventoryActivities
    from poolctl.activities.messages import EventFinish, EventStart, PoolRef, PoolStatusUpdate
    from poolctl.domain.arbitration import arbitrate
    from poolctl.domain.capacity import clamp, pick_victims, plan_scale
    from poolctl.domain.decision import Direction, Recommendation
    from poolctl.domain.health import HealthState, MemberHealth, plan_healing
    from poolctl.domain.health_messages import ServerHealthChange
    from poolctl.domain.names import pool_key, scale_workflow_id
    from poolctl.domain.pool_spec import PoolSpec, PoolStatus, provider_change_refusal
    from poolctl.domain.pool_state import (
        EventSummary,
        PoolInput,
        PoolState,
        PoolStatusView,
        ScaleAccepted,
        ScaleInput,
        ScaleRequest,
        ScaleResult,
        ServerRecord,
    )
    from poolctl.workflows.history import history_too_long
    from poolctl.workflows.pool_members import (
        start_health_watches,
        stop_health_watches,
        sync_balancers,
        update_health_specs,
    )
    from poolctl.workflows.scale_pool import BOOKKEEPING_RETRY, ScalePoolWorkflow, failure_text

MAX_REMEMBERED_REQUESTS = 50


@workflow.defn
class PoolWorkflow:
    @workflow.init
    def __init__(self, inp: PoolInput) -> None:
        self.team = inp.team
        self.spec: PoolSpec = inp.spec
        self.runtime = inp.runtime
        self.state: PoolState = inp.state or PoolState(desired=inp.spec.initial_desired)
        self._wake = True
        self._scaling = False
        self._published: tuple[str, str | None, int] | None = None

    # ---- the loop -------------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: PoolInput) -> str:
        if not self.state.adopted:
            await self._adopt_existing_servers()
        while True:
            await self._publish_status()
            try:
                await workflow.wait_condition(
                    lambda: self._wake,
                    timeout=timedelta(seconds=self._next_wake_s()),
                    timeout_summary="reconcile",
                )
            except TimeoutError:
                # a quiet period: re-push balancer membership anyway (idempotent), so a balancer that
                # restarted empty (HAProxy's dynamic servers vanish on reload) is rebuilt
                self.state.synced_members = None
            self._wake = False
            if self.state.deleting:
                await self._remove_all_servers()
                if self.state.servers:  # some could not be terminated yet: try again, never leak them
                    self._wake = False
                    continue
                await self._publish_status()
                return "deleted"
            await self._reconcile()
            await self._tend_members()
            if history_too_long(self.runtime.history_budget):
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    PoolInput(team=self.team, spec=self.spec, runtime=self.runtime, state=self.state)
                )

    async def _adopt_existing_servers(self) -> None:
        """A fresh pool workflow takes over the servers the store already knows (e.g. after re-creation)."""
        servers = await workflow.execute_activity_method(
            InventoryActivities.load_pool_servers,
            PoolRef(team=self.team, pool=self.spec.name),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=BOOKKEEPING_RETRY,
            summary="adopt servers already in the inventory",
        )
        known = {s.server_id for s in self.state.servers}
        self.state.servers.extend(s for s in servers if s.server_id not in known)
        self.state.adopted = True
        self.state.epoch = workflow.info().run_id[:8]

    def target(self) -> int:
        return clamp(self.state.desired, self.spec.min_servers, self.spec.max_servers)

    def _next_wake_s(self) -> float:
        """The reconcile interval, or sooner when a cooldown ends (a held decision is then re-arbitrated)."""
        wake = self.runtime.reconcile_interval_s
        now = workflow.now()
        for until in (
            self.state.cooldowns.scale_out_blocked_until,
            self.state.cooldowns.scale_in_blocked_until,
        ):
            if until is not None and until > now and self.state.recommendations:
                wake = min(wake, (until - now).total_seconds() + 0.5)
        if self.spec.auto_healing and self.spec.heal_after_s > 0:  # re-check when a server is due for healing
            for s in self.state.servers:
                if s.health == "unhealthy" and s.health_changed_at is not None:
                    due = (s.health_changed_at - now).total_seconds() + self.spec.heal_after_s
                    if due > 0:
                        wake = min(wake, due + 0.2)
        return max(wake, 0.5)

    def _active_recommendations(self) -> list[Recommendation]:
        active = {p.name for p in self.spec.policies if p.is_active}
        return [r for name, r in sorted(self.state.recommendations.items()) if name in active]

    def _arbitrate_policies(self) -> None:
        """Let the policies' latest recommendations move `desired` (domain.arbitration.arbitrate decides)."""
        recs = self._active_recommendations()
        if not recs:
            return
        decision = arbitrate(
            recs,
            current=self.target(),  # the size being converged to: before the first scale-up there are 0 servers
            pool_min=self.spec.min_servers,
            pool_max=self.spec.max_servers,
            now=workflow.now(),
            cooldowns=self.state.cooldowns,
        )
        if decision.direction is Direction.NONE or decision.desired == self.state.desired:
            if self.state.last_decision is None or self.state.last_decision.reason != decision.reason:
                self.state.last_decision = decision
            return
        self.state.last_decision = decision
        self.state.desired = decision.desired
        winner = max((r for r in recs if r.desired == decision.desired), key=lambda r: r.policy, default=None)
        self.state.pending_policy = winner.policy if winner else None
        self.state.pending_cause = f"policy {winner.policy if winner else '?'}: {decision.reason.value}"
        self.state.pending_decision = decision.model_dump(mode="json")
        self.state.cooldowns = self.state.cooldowns.after_decision(decision, workflow.now())

    async def _reconcile(self) -> None:
        if self.spec.paused:
            self._set_status(PoolStatus.PAUSED, "pool is paused")
            return
        if self.state.status is PoolStatus.ERROR:
            return  # waits for an operator: a new scale request or spec clears it
        self._arbitrate_policies()
        plan = plan_scale(len(self.state.servers), self.target())
        if plan.direction is Direction.NONE:
            await self._heal()
            return
        await self._run_scaling(plan.direction.value, plan.count, plan.target)

    async def _heal(self) -> None:
        """Auto-healing: replace servers that stay unhealthy, a batch at a time (launch before terminate);
        stop and mark the pool `degraded` when more than half of it is unhealthy (a shared cause)."""
        if not (self.spec.auto_healing and self.spec.effective_health_check):
            self._set_status(PoolStatus.ACTIVE, None)
            return
        members = [
            MemberHealth(
                server_id=s.server_id,
                state=HealthState(s.health),
                unhealthy_since=s.health_changed_at if s.health == "unhealthy" else None,
            )
            for s in self.state.servers
        ]
        plan = plan_healing(
            members,
            pool_size=max(self.target(), len(self.state.servers)),
            now=workflow.now(),
            replace_after=self.spec.heal_after_s,
        )
        if plan.status == "degraded":
            if self.state.status is not PoolStatus.DEGRADED:
                self._set_status(PoolStatus.DEGRADED, plan.reason)
                await self._record_note("heal", f"auto-healing stopped: {plan.reason}", "held")
            return
        self._set_status(PoolStatus.ACTIVE, None)
        if plan.replace:
            victims = [s for s in self.state.servers if s.server_id in set(plan.replace)]
            self.state.pending_cause = (
                f"auto-healing: replace unhealthy {', '.join(v.server_id for v in victims)}"
            )
            await self._run_scaling("replace", len(victims), len(self.state.servers), victims=victims)

    async def _record_note(self, direction: str, cause: str, status: str) -> None:
        """A scaling event for something the pool decided not to do (e.g. healing stopped)."""
        self.state.seq += 1
        key = f"{scale_workflow_id(self.team, self.spec.name, self.state.seq)}@{self.state.epoch}/{direction}"
        n = len(self.state.servers)
        await workflow.execute_activity_method(
            InventoryActivities.record_event_started,
            EventStart(
                team=self.team,
                pool=self.spec.name,
                event_key=key,
                direction=direction,
                from_count=n,
                to_count=n,
                cause=cause,
                started_at=workflow.now(),
            ),  # fmt: skip
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=BOOKKEEPING_RETRY,
            summary=cause[:80],
        )
        await workflow.execute_activity_method(
            InventoryActivities.record_event_finished,
            EventFinish(event_key=key, status=status, finished_at=workflow.now()),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=BOOKKEEPING_RETRY,
        )

    async def _tend_members(self) -> None:
        """Health checks for new servers, changed check specs, and the balancers' membership."""
        if self.state.deleting:
            return
        await start_health_watches(self.team, self.spec, self.state.servers, self.runtime)
        if self.state.health_spec_changed:
            self.state.health_spec_changed = False
            await update_health_specs(self.team, self.spec, self.state.servers)
        self.state.synced_members = await sync_balancers(
            self.team, self.spec, self.state.servers, self.state.synced_members
        )

    async def _remove_all_servers(self) -> None:
        self._set_status(PoolStatus.DELETING, "pool deleted")
        if self.state.servers:
            self.state.pending_cause = "pool deleted"
            await self._run_scaling("down", len(self.state.servers), 0)

    async def _run_scaling(
        self, direction: str, count: int, target: int, *, victims: list[ServerRecord] | None = None
    ) -> None:
        self.state.seq += 1
        seq = self.state.seq
        current = len(self.state.servers)
        if victims is None:
            victims = (
                pick_victims(self.state.servers, count, self.spec.termination_policy)
                if direction == "down"
                else []
            )
        if not self.state.deleting:
            self._set_status(PoolStatus.SCALING, f"scaling {direction} {current} -> {target}")
        await self._publish_status()
        self._scaling = True
        inp = ScaleInput(
            team=self.team,
            pool=self.spec.name,
            seq=seq,
            epoch=self.state.epoch,
            direction=direction,
            count=count,
            from_count=current,
            to_count=target,
            cause=self.state.pending_cause,
            policy_name=self.state.pending_policy,
            decision=self.state.pending_decision,
            provider=self.spec.provider,
            provider_options=self.spec.provider_options,
            weight=self.spec.server_weight,
            victims=victims,
            drain=bool(self.spec.load_balancers),
            drain_timeout_s=max((lb.drain_timeout_s for lb in self.spec.load_balancers), default=0.0),
            runtime=self.runtime,
        )
        try:
            result = await workflow.execute_child_workflow(
                ScalePoolWorkflow.run,
                inp,
                id=scale_workflow_id(self.team, self.spec.name, seq),
                static_summary=f"scale {direction} {current} -> {target}: {self.state.pending_cause}",
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(sa.POOL_ID, pool_key(self.team, self.spec.name)),
                        SearchAttributePair(sa.TEAM_ID, self.team),
                    ]
                ),
            )
        except ChildWorkflowError as e:
            result = ScaleResult(status="failed", error=failure_text(e))
        finally:
            self._scaling = False
        self._apply_result(inp, result)
        await stop_health_watches(self.team, self.spec.name, result.removed)

    def _apply_result(self, inp: ScaleInput, result: ScaleResult) -> None:
        removed = set(result.removed)
        self.state.servers = [s for s in self.state.servers if s.server_id not in removed]
        for added in result.added:
            # without a check, a server that answered at boot counts as healthy
            if self.spec.effective_health_check is None:
                added.health = "healthy"
            self.state.servers.append(added)
        self.state.last_event = EventSummary(
            seq=inp.seq,
            direction=inp.direction,
            from_count=inp.from_count,
            to_count=inp.to_count,
            cause=inp.cause,
            status=result.status,
            error=result.error,
            finished_at=workflow.now(),
        )
        self.state.pending_policy = None
        self.state.pending_decision = None
        if result.status != "succeeded":
            self._set_status(
                PoolStatus.ERROR, f"scale {inp.direction} #{inp.seq} {result.status}: {result.error}"
            )
        elif not self.state.deleting:
            self.state.pending_cause = "reconcile"
            self._set_status(PoolStatus.ACTIVE, None)
            self._wake = True  # re-check at once: the target may have moved while we scaled

    # ---- status: the store and the UI -----------------------------------------------------------

    def _set_status(self, status: PoolStatus, reason: str | None) -> None:
        self.state.status = status
        self.state.status_reason = reason

    async def _publish_status(self) -> None:
        """Mirror status changes to the search attribute (UI filter) and the store; only on change."""
        now = (self.state.status.value, self.state.status_reason, self.state.desired)
        if now == self._published:
            return
        if self._published is None or self._published[0] != now[0]:
            workflow.upsert_search_attributes([sa.POOL_STATE.value_set(self.state.status.value)])
        self._published = now
        await workflow.execute_activity_method(
            InventoryActivities.update_pool_status,
            PoolStatusUpdate(
                team=self.team,
                pool=self.spec.name,
                status=self.state.status.value,
                reason=self.state.status_reason,
                desired=self.state.desired,
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=BOOKKEEPING_RETRY,
            summary=f"status {self.state.status.value}",
        )

    # ---- messages ---------------------------------------------------------------------------------

    @workflow.update
    async def scale(self, req: ScaleRequest) -> ScaleAccepted:
        """Set desired servers by hand (the validator refuses out-of-range values before history)."""
        previous = self.state.desired
        if req.request_id and req.request_id in self.state.recent_request_ids:
            return ScaleAccepted(
                previous_desired=previous, desired=self.state.desired, current=len(self.state.servers)
            )
        if req.request_id:
            self.state.recent_request_ids = (self.state.recent_request_ids + [req.request_id])[
                -MAX_REMEMBERED_REQUESTS:
            ]
        self.state.desired = req.desired
        self.state.pending_cause = req.reason
        self.state.pending_policy = None
        self.state.pending_decision = None
        if self.state.status is PoolStatus.ERROR:
            self._set_status(PoolStatus.ACTIVE, None)
        self._wake = True
        return ScaleAccepted(previous_desired=previous, desired=req.desired, current=len(self.state.servers))

    @scale.validator
    def _validate_scale(self, req: ScaleRequest) -> None:
        if self.state.deleting:
            raise ValueError(f"pool {self.spec.name} is being deleted")
        if not (self.spec.min_servers <= req.desired <= self.spec.max_servers):
            raise ValueError(
                f"desired {req.desired} is outside pool {self.spec.name}'s range "
                f"[min_servers={self.spec.min_servers}, max_servers={self.spec.max_servers}]"
            )

    @workflow.update
    async def apply_spec(self, spec: PoolSpec) -> ScaleAccepted:
        """A re-applied spec: new bounds, provider options, policies; desired follows the spec when it names one."""
        previous = self.state.desired
        self.state.health_spec_changed |= spec.effective_health_check != self.spec.effective_health_check
        self.spec = spec
        if spec.desired_servers is not None:
            self.state.desired = spec.desired_servers
        self.state.desired = clamp(self.state.desired, spec.min_servers, spec.max_servers)
        self.state.pending_cause = "spec applied"
        names = {p.name for p in spec.policies}
        self.state.recommendations = {k: v for k, v in self.state.recommendations.items() if k in names}
        if self.state.status in (PoolStatus.ERROR, PoolStatus.PAUSED):
            self._set_status(PoolStatus.ACTIVE, None)
        self._wake = True
        return ScaleAccepted(
            previous_desired=previous, desired=self.state.desired, current=len(self.state.servers)
        )

    @apply_spec.validator
    def _validate_apply_spec(self, spec: PoolSpec) -> None:
        if spec.name != self.spec.name:
            raise ValueError(f"spec for pool {spec.name!r} sent to pool {self.spec.name!r}")
        if self.state.deleting:
            raise ValueError(f"pool {self.spec.name} is being deleted")
        if spec.provider != self.spec.provider and self.state.servers:
            raise ValueError(
                provider_change_refusal(self.spec.provider, spec.provider, len(self.state.servers))
            )

    @workflow.update
    async def delete(self) -> int:
        """Terminate every server, then end the workflow. Returns how many servers will be removed."""
        self.state.deleting = True
        self._wake = True
        return len(self.state.servers)

    @workflow.signal
    def recommend(self, rec: Recommendation) -> None:
        """A policy's latest recommendation (PolicyWorkflow sends it when it changes)."""
        self.state.recommendations[rec.policy] = rec
        self._wake = True

    @workflow.signal
    def server_health(self, change: ServerHealthChange) -> None:
        """A HealthCheckWorkflow saw a transition: update the member, re-balance, maybe heal."""
        for s in self.state.servers:
            if s.server_id == change.server_id:
                s.health = change.state.value
                s.health_changed_at = change.at
                self._wake = True

    @workflow.signal
    def forget_policy(self, name: str) -> None:
        """A policy was removed or stopped: its recommendation no longer counts."""
        self.state.recommendations.pop(name, None)
        self._wake = True

    @workflow.query
    def status(self) -> PoolStatusView:
        return PoolStatusView(
            team=self.team,
            pool=self.spec.name,
            status=self.state.status,
            status_reason=self.state.status_reason,
            desired=self.target(),
            current=len(self.state.servers),
            min_servers=self.spec.min_servers,
            max_servers=self.spec.max_servers,
            scaling=self._scaling,
            seq=self.state.seq,
            servers=self.state.servers,
            last_event=self.state.last_event,
            recommendations=self._active_recommendations(),
            cooldowns=self.state.cooldowns,
            last_decision=self.state.last_decision,
        )
