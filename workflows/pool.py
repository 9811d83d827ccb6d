"""PoolWorkflow: the single writer of a pool's spec, capacity and membership. It takes applied specs (the
`apply` update, merged like `kubectl apply`), manual scale requests, policy recommendations and health
changes; writes its accepted spec to the store; runs its policies; reconciles the pool to its desired size
one ScalePoolWorkflow at a time; runs the delete saga; and continues-as-new with its state."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from poolctl import search_attributes as sa
    from poolctl.activities.inventory import InventoryActivities
    from poolctl.activities.messages import EventFinish, EventStart, PoolRef, PoolSpecRecord, PoolStatusUpdate
    from poolctl.domain.apply_merge import apply_refusal, merge_apply
    from poolctl.domain.arbitration import arbitrate
    from poolctl.domain.capacity import clamp, pick_victims, plan_scale
    from poolctl.domain.decision import Direction, Recommendation
    from poolctl.domain.health import HealthState, MemberHealth, plan_healing
    from poolctl.domain.health_messages import ServerHealthChange
    from poolctl.domain.names import pool_key, scale_workflow_id
    from poolctl.domain.notifications import WebhookEvent
    from poolctl.domain.pool_events import heal_event, health_event, pool_error_event, scaling_event
    from poolctl.domain.pool_spec import PoolSpec, PoolStatus
    from poolctl.domain.pool_state import (
        ApplyRequest,
        ApplyResult,
        EventSummary,
        PoolInput,
        PoolState,
        PoolStatusView,
        ScaleAccepted,
        ScaleAction,
        ScaleInput,
        ScaleIntent,
        ScaleRequest,
        ScaleResult,
        ServerRecord,
    )
    from poolctl.domain.static_pool import (
        RECOMMENDATION_ONLY,
        STATIC_PROVIDER,
        ServerChangeRequest,
        ServerChangeResult,
        StaticMembership,
        apply_server_change,
        listed,
        merge_static_servers,
        server_change_refusal,
    )
    from poolctl.workflows.history import history_too_long
    from poolctl.workflows.notify import notify
    from poolctl.workflows.pool_api import PoolSignals
    from poolctl.workflows.pool_drift import drift_wake_s, reconcile_drift
    from poolctl.workflows.pool_members import (
        start_health_watches,
        stop_health_watches,
        sync_balancers,
        update_health_specs,
    )
    from poolctl.workflows.pool_policies import (
        members_view_fingerprint,
        stop_policies,
        sync_policies,
        tell_members,
    )
    from poolctl.workflows.pool_recovery import may_reconcile, retry_wake_s, scaling_failed
    from poolctl.workflows.retry_policies import BOOKKEEPING_RETRY
    from poolctl.workflows.scale_pool import ScalePoolWorkflow, failure_text
    from poolctl.workflows.static_members import membership_plan, register_servers, rotation_notes

MAX_REMEMBERED_REQUESTS = 50


@workflow.defn
class PoolWorkflow(PoolSignals):
    @workflow.init
    def __init__(self, inp: PoolInput) -> None:
        # a copy: signals taken before the run starts change this run's state, and the team check
        # (team_interceptor) verifies the start's proof against the input after them: it refused a
        # continue-as-new run that signals reached first, and the chain ended
        inp = inp.model_copy(deep=True)
        self.team = inp.team
        self.spec: PoolSpec = inp.spec
        self.runtime = inp.runtime
        self.state: PoolState = inp.state or PoolState(
            desired=inp.spec.initial_desired, static=StaticMembership(registered=listed(inp.spec.servers))
        )
        self._wake = True
        self._scaling = False
        self._published: tuple[str, str | None, int] | None = None
        self._converging = asyncio.Lock()  # the loop and the apply handler both write spec and policies
        self._outbox: list[WebhookEvent] = []  # events for the pool's webhooks, sent by the loop

    # ---- the loop -------------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: PoolInput) -> str:
        if not self.state.adopted:
            await self._adopt_existing_servers()
        while True:
            await self._converge_spec()
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
                if not await self._delete():  # some servers could not be terminated yet: try again
                    self._wake = False
                    await self._send_notifications()
                    continue
                await self._send_notifications()
                return "deleted"
            await self._check_drift()
            await self._reconcile()
            await self._tend_members()
            await self._send_notifications()
            if history_too_long(self.runtime.history_budget):
                await workflow.wait_condition(workflow.all_handlers_finished)
                await self._send_notifications()
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
        # the run id's random tail: a UUIDv7 run id starts with its creation time, so two pool chains
        # created within a minute of each other (a pool deleted and applied again) shared `run_id[:8]`
        # and with it every idempotency key: the new chain's first provision found the old one's
        # terminated server
        self.state.epoch = workflow.info().run_id.replace("-", "")[-12:]

    async def _converge_spec(self) -> None:
        """Bring the store and the policy workflows in line with the spec this workflow holds. Idempotent
        and versioned: an interrupted apply (or a crashed worker) is finished here, by the workflow."""
        async with self._converging:
            version = self.state.spec_version
            if self.state.stored_version < version:
                await workflow.execute_activity_method(
                    InventoryActivities.store_pool_spec,
                    PoolSpecRecord(team=self.team, spec=self.spec, desired=self.state.desired),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=BOOKKEEPING_RETRY,
                    summary=f"store spec v{version}",
                )
                self.state.stored_version = version
            if not self.state.deleting and self.state.policies_version < version:
                self.state.policies = await sync_policies(
                    self.team, self.spec, self.state.policies, self.state.servers, self.runtime
                )
                self.state.policies_version = version

    @property
    def static(self) -> bool:
        """A pool of existing servers: poolctl registers them, never provisions (domain.static_pool)."""
        return self.spec.provider == STATIC_PROVIDER

    def target(self) -> int:
        if self.static:
            return len(self.state.static.registered)
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
                if s.health is HealthState.UNHEALTHY and s.health_changed_at is not None:
                    due = (s.health_changed_at - now).total_seconds() + self.spec.heal_after_s
                    if due > 0:
                        wake = min(wake, due + 0.2)
        for extra_s in (retry_wake_s(self.state, now), drift_wake_s(self.state, self.runtime, now)):
            if extra_s is not None:
                wake = min(wake, extra_s + 0.2)
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
        name = winner.policy if winner else "?"
        self.state.desired_set_by = f"policy {name}"
        self.state.intent = ScaleIntent(
            cause=f"policy {name}: {decision.reason.value}",
            policy=winner.policy if winner else None,
            decision=decision.model_dump(mode="json"),
        )
        self.state.cooldowns = self.state.cooldowns.after_decision(decision, workflow.now())

    async def _reconcile(self) -> None:
        if self.spec.paused:
            self._set_status(PoolStatus.PAUSED, "pool is paused")
            return
        if self.static:
            await self._reconcile_static()
            return
        if not may_reconcile(self.state, workflow.now()):
            return  # in error: the next try is not due yet (an operator's scale or spec clears it at once)
        self._arbitrate_policies()
        plan = plan_scale(len(self.state.servers), self.target())
        if plan.direction is Direction.NONE:
            await self._heal()
            return
        await self._run_scaling(ScaleAction(plan.direction.value), plan.count, plan.target)

    async def _reconcile_static(self) -> None:
        """A static pool: register and deregister servers to match its list (spec and `server add/remove`),
        and record servers that healing takes out of rotation or puts back. Never provisions; its policies
        only recommend (their specs are dry runs)."""
        plan = membership_plan(self.state)
        for note in await register_servers(self.team, self.spec, self.state, self.runtime, plan):
            await self._record_note(note.direction, note.cause, note.status, (note.from_count, note.to_count))
        if plan.to_deregister:
            victims = [s for s in self.state.servers if s.server_id in set(plan.to_deregister)]
            self.state.intent = ScaleIntent(
                cause=f"server remove {', '.join(f'{v.host}:{v.port}' for v in victims)}"
            )
            await self._run_scaling(ScaleAction.DOWN, len(victims), self.target(), victims=victims)
        self.state.desired = self.target()
        self._set_status(PoolStatus.ACTIVE, None)
        for change in rotation_notes(self.state):
            what = "out of rotation (unhealthy)" if change.out else "back in rotation (healthy)"
            await self._record_note("heal", f"auto-healing: {change.server_id} {what}", "succeeded")
            self._queue(
                heal_event(
                    self.team, self.spec.name, self.state.epoch, workflow.now(),
                    action="out_of_rotation" if change.out else "back_in_rotation", key=f"{self.state.seq}",
                    servers=[change.server_id], status="succeeded", reason="unhealthy" if change.out else "healthy",
                )
            )  # fmt: skip

    async def _heal(self) -> None:
        """Auto-healing: replace servers that stay unhealthy, a batch at a time (launch before terminate);
        stop and mark the pool `degraded` when more than half of it is unhealthy (a shared cause)."""
        if not (self.spec.auto_healing and self.spec.effective_health_check):
            self._set_status(PoolStatus.ACTIVE, None)
            return
        members = [
            MemberHealth(
                server_id=s.server_id,
                state=s.health,
                unhealthy_since=s.health_changed_at if s.health is HealthState.UNHEALTHY else None,
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
                self._queue(
                    heal_event(
                        self.team, self.spec.name, self.state.epoch, workflow.now(),
                        action="degraded", key=f"{self.state.seq}", status="held", reason=plan.reason,
                    )
                )  # fmt: skip
            return
        self._set_status(PoolStatus.ACTIVE, None)
        if plan.replace:
            victims = [s for s in self.state.servers if s.server_id in set(plan.replace)]
            self.state.intent = ScaleIntent(
                cause=f"auto-healing: replace unhealthy {', '.join(v.server_id for v in victims)}"
            )
            await self._run_scaling(
                ScaleAction.REPLACE, len(victims), len(self.state.servers), victims=victims
            )
            done = self.state.last_event
            self._queue(
                heal_event(
                    self.team, self.spec.name, self.state.epoch, workflow.now(), action="replaced",
                    key=f"{self.state.seq}", servers=[v.server_id for v in victims],
                    status=done.status if done else "unknown", reason=done.error or "" if done else "",
                )
            )  # fmt: skip

    async def _check_drift(self) -> None:
        """Drift reconcile (workflows.pool_drift): gone members forgotten, orphans adopted or terminated;
        each action a recorded event."""
        if self.static:
            return  # a static pool's servers are the spec's; the static driver does not list by tag
        for note in await reconcile_drift(self.team, self.spec, self.state, self.runtime):
            await self._record_note(note.direction, note.cause, note.status, (note.from_count, note.to_count))

    async def _record_note(
        self, direction: str, cause: str, status: str, sizes: tuple[int, int] | None = None
    ) -> None:
        """A scaling event for something the pool did or decided other than a scaling it ran (a server
        registered, a drift action, healing stopped). `sizes`: the pool's servers before and after that
        change, when it changed them (they are recorded after the changes of one reconcile are all made);
        by default today's count at both ends. Only the events' values depend on it: the same activities
        run either way (replay-safe)."""
        self.state.seq += 1
        key = f"{scale_workflow_id(self.team, self.spec.name, self.state.seq)}@{self.state.epoch}/{direction}"
        n = len(self.state.servers)
        from_count, to_count = sizes or (n, n)
        await workflow.execute_activity_method(
            InventoryActivities.record_event_started,
            EventStart(
                team=self.team,
                pool=self.spec.name,
                event_key=key,
                direction=direction,
                from_count=from_count,
                to_count=to_count,
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
        seen = members_view_fingerprint(self.state.servers)
        if seen != self.state.members_told:
            await tell_members(self.team, self.spec.name, sorted(self.state.policies), self.state.servers)
            self.state.members_told = seen

    async def _delete(self) -> bool:
        """The delete saga: stop the policies, terminate every server (drained first), then forget the
        pool in the store. False while servers remain (the loop tries again; nothing leaks)."""
        self._set_status(PoolStatus.DELETING, "pool deleted")
        async with self._converging:
            names = set(self.state.policies) | {p.name for p in self.spec.policies}
            if names:
                await stop_policies(self.team, self.spec.name, sorted(names))
                self.state.policies = {}
                self.state.recommendations = {}
        if self.state.servers:
            self.state.intent = ScaleIntent(cause="pool deleted")
            await self._run_scaling(ScaleAction.DOWN, len(self.state.servers), 0)
        if self.state.servers:
            return False
        await self._publish_status()
        await workflow.execute_activity_method(
            InventoryActivities.forget_pool,
            PoolRef(team=self.team, pool=self.spec.name),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=BOOKKEEPING_RETRY,
            summary="remove the pool from the store",
        )
        return True

    async def _run_scaling(
        self, direction: ScaleAction, count: int, target: int, *, victims: list[ServerRecord] | None = None
    ) -> None:
        self.state.seq += 1
        seq = self.state.seq
        current = len(self.state.servers)
        intent, self.state.intent = self.state.intent, ScaleIntent(cause="reconcile")  # consumed here
        if victims is None:
            victims = (
                pick_victims(self.state.servers, count, self.spec.termination_policy)
                if direction is ScaleAction.DOWN
                else []
            )
        if not self.state.deleting and self.state.status is not PoolStatus.ERROR:  # a retry stays `error`
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
            cause=intent.cause,
            policy_name=intent.policy,
            decision=intent.decision,
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
                static_summary=f"scale {direction} {current} -> {target}: {intent.cause}",
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
                added.health = HealthState.HEALTHY
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
        self._queue(
            scaling_event(self.team, self.spec.name, self.state.epoch, self.state.last_event, workflow.now())
        )
        if result.status != "succeeded":
            error = f"scale {inp.direction} #{inp.seq} {result.status}: {result.error}"
            scaling_failed(self.state, error, self.runtime, workflow.now())  # each failed try is a pool_error
            self._queue(
                pool_error_event(self.team, self.spec.name, self.state.epoch, inp.seq, error, workflow.now())
            )
        elif not self.state.deleting:
            self._set_status(PoolStatus.ACTIVE, None)
            self._wake = True  # re-check at once: the target may have moved while we scaled

    # ---- status: the store and the UI -----------------------------------------------------------

    def _set_status(self, status: PoolStatus, reason: str | None) -> None:
        self.state.status = status
        self.state.status_reason = reason
        if status is not PoolStatus.ERROR:
            self.state.error_retry = None  # recovered (or an operator acted): the backoff starts over

    # ---- notifications: webhooks (workflows/notify.py delivers them, never blocking the pool) ------

    def _queue(self, event: WebhookEvent) -> None:
        if self.spec.webhooks:
            self._outbox.append(event)

    async def _send_notifications(self) -> None:
        outbox, self._outbox = self._outbox, []
        for event in outbox:
            await notify(self.spec.webhooks, event)

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
        self.state.desired_set_by = "operator" if req.reason == "manual scale" else f"operator ({req.reason})"
        self.state.intent = ScaleIntent(cause=req.reason)
        if self.state.status is PoolStatus.ERROR:
            self._set_status(PoolStatus.ACTIVE, None)
        self._wake = True
        return ScaleAccepted(previous_desired=previous, desired=req.desired, current=len(self.state.servers))

    @scale.validator
    def _validate_scale(self, req: ScaleRequest) -> None:
        if self.state.deleting:
            raise ValueError(f"pool {self.spec.name} is being deleted")
        if self.static:
            raise ValueError(
                f"pool {self.spec.name} is static: its size is its servers; use poolctl server add/remove"
            )
        if not (self.spec.min_servers <= req.desired <= self.spec.max_servers):
            raise ValueError(
                f"desired {req.desired} is outside pool {self.spec.name}'s range "
                f"[min_servers={self.spec.min_servers}, max_servers={self.spec.max_servers}]"
            )

    @workflow.update
    async def apply(self, req: ApplyRequest) -> ApplyResult:
        """An applied spec (`poolctl apply` sends each pool's whole spec with update-with-start).

        Merged against the last applied spec (domain.apply_merge): `desired_servers` moves the pool only when
        it changed in the file. The accepted spec is written to the store and the policy workflows follow
        it before this returns; if the caller dies first, the workflow still finishes both."""
        previous = self.state.desired
        first = self.state.applies == 0 and req.spec == self.spec  # the spec this workflow was started with
        plan = merge_apply(
            None if first else self.spec,
            req.spec,
            desired=self.state.desired,
            desired_set_by=self.state.desired_set_by,
        )
        self.state.applies += 1
        if req.spec.provider == STATIC_PROVIDER:  # like desired: what changed in the file, not hand edits
            self.state.static.registered = merge_static_servers(
                None if first or not self.static else self.spec.servers,
                req.spec.servers,
                self.state.static.registered,
            )
        if req.spec != self.spec:
            self.state.health_spec_changed |= (
                req.spec.effective_health_check != self.spec.effective_health_check
            )
            self.spec = req.spec
            self.state.spec_version += 1
            names = {p.name for p in req.spec.policies}
            self.state.recommendations = {k: v for k, v in self.state.recommendations.items() if k in names}
            if self.state.status in (PoolStatus.ERROR, PoolStatus.PAUSED):
                self._set_status(PoolStatus.ACTIVE, None)
        if plan.desired != self.state.desired:
            self.state.intent = ScaleIntent(cause="spec applied")
        self.state.desired = plan.desired
        self.state.desired_set_by = plan.desired_set_by
        self._wake = True
        await self._converge_spec()
        return ApplyResult(
            action=plan.action,
            changes=plan.changes,
            kept=plan.kept,
            previous_desired=previous,
            desired=self.target(),
            current=len(self.state.servers),
        )

    @apply.validator
    def _validate_apply(self, req: ApplyRequest) -> None:
        refusal = self.apply_refusal(req)
        if refusal is not None:
            raise ValueError(refusal)

    @workflow.query
    def apply_refusal(self, req: ApplyRequest) -> str | None:
        """Why `apply` would refuse this spec ("field: message"), or None: lets `poolctl apply` check every
        pool before it sends any (an apply is all-or-nothing)."""
        refusal = apply_refusal(
            team=self.team,
            current=self.spec,
            servers=len(self.state.servers),
            deleting=self.state.deleting,
            request_team=req.team,
            new=req.spec,
        )
        return None if refusal is None else f"{refusal[0]}: {refusal[1]}"

    @workflow.update
    async def delete(self) -> int:
        """Stop the policies, terminate every server, forget the pool in the store, then end the workflow.
        Idempotent (a repeat while deleting is fine). Returns how many servers will be removed."""
        await workflow.wait_condition(
            lambda: self.state.adopted
        )  # a fresh workflow adopts stored servers first
        self.state.deleting = True
        self._wake = True
        return len(self.state.servers)

    @workflow.update
    async def change_server(self, req: ServerChangeRequest) -> ServerChangeResult:
        """`poolctl server add POOL ADDRESS [--weight N]` / `server remove POOL ADDRESS` on a static pool:
        the loop registers the server, or drains and deregisters it."""
        self.state.static.registered, result = apply_server_change(self.state.static.registered, req)
        self._wake = True
        return result

    @change_server.validator
    def _validate_change_server(self, req: ServerChangeRequest) -> None:
        if self.state.deleting:
            raise ValueError(f"pool {self.spec.name} is being deleted")
        refusal = server_change_refusal(
            self.spec.provider, self.state.static.registered, req, pool=self.spec.name
        )
        if refusal is not None:
            raise ValueError(refusal)

    @workflow.signal
    def recommend(self, rec: Recommendation) -> None:
        """A policy's latest recommendation (PolicyWorkflow sends it when it changes)."""
        if self.state.deleting or rec.policy not in {p.name for p in self.spec.policies}:
            return  # a stopped or removed policy's last word no longer counts
        self.state.recommendations[rec.policy] = rec
        self._wake = True

    @workflow.signal
    def server_health(self, change: ServerHealthChange) -> None:
        """A HealthCheckWorkflow saw a transition: update the member, re-balance, maybe heal."""
        for s in self.state.servers:
            if s.server_id == change.server_id:
                if s.health is not change.state:
                    self._queue(health_event(self.team, self.spec.name, self.state.epoch, change))
                s.health = change.state
                s.health_changed_at = change.at
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
            desired_set_by=self.state.desired_set_by,
            recommendation_only=RECOMMENDATION_ONLY if self.static and self.spec.policies else None,
        )
