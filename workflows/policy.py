"""PolicyWorkflow: one scaling policy's evaluation loop.

Every `evaluation_interval` (sooner when a signal or update arrives, or when a schedule window opens or
closes): read the metric (a local activity) for the pool's members (the pool signals them), evaluate the
policy with the pure code in `domain.evaluation`, and signal the pool's `recommend` only when the
recommendation differs from the last one sent. A decision that changes the recommendation is kept (the last MAX_DECISIONS) and written to the store.
Continues-as-new with its state; the pool owns the cooldowns (they are durable there).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, FailureError

with workflow.unsafe.imports_passed_through():
    from poolctl import search_attributes as sa
    from poolctl.activities.policy_metrics import PolicyMetricActivities
    from poolctl.domain import evaluation
    from poolctl.domain.decision import Decision, Direction, Recommendation, same_recommendation
    from poolctl.domain.evaluation import PolicyState
    from poolctl.domain.names import pool_key, pool_workflow_id
    from poolctl.domain.policy_spec import PolicySpec
    from poolctl.domain.policy_state import (
        MAX_DECISIONS,
        DecisionRecord,
        MetricReading,
        MetricReadRequest,
        PolicyInput,
        PolicyStateView,
        policy_status,
    )
    from poolctl.domain.pool_state import PoolMembers, ServerRecord
    from poolctl.domain.schedule import schedule_window_active
    from poolctl.workflows.history import history_too_long
    from poolctl.workflows.pool_api import PoolSignals
    from poolctl.workflows.retry_policies import BOOKKEEPING_RETRY, READ_RETRY

RESEND_AFTER = timedelta(minutes=5)


@workflow.defn
class PolicyWorkflow:
    @workflow.init
    def __init__(self, inp: PolicyInput) -> None:
        self.team = inp.team
        self.pool = inp.pool
        self.spec: PolicySpec = inp.spec
        self.pstate: PolicyState = inp.state or PolicyState()
        self.last_sent: Recommendation | None = inp.last_sent
        self.decisions: list[Decision] = list(inp.decisions)[-MAX_DECISIONS:]
        self.current: int | None = inp.current
        self.last_error: str | None = inp.last_error
        self.history_budget = inp.history_budget
        self.members: list[ServerRecord] = list(inp.members)
        self._wake = False
        self._next_at: datetime | None = None
        self._last_sent_at: datetime | None = None  # not carried: after continue-as-new, one refresh

    # ---- the loop -------------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: PolicyInput) -> str:
        self._publish_search_attributes()
        while True:
            self._wake = False  # a signal arriving while we evaluate wakes the next wait at once
            await self._evaluate()
            if history_too_long(self.history_budget):
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self._carry())
            wait_s = self._next_wait_s()
            self._next_at = workflow.now() + timedelta(seconds=wait_s)
            try:
                await workflow.wait_condition(
                    lambda: self._wake, timeout=timedelta(seconds=wait_s), timeout_summary="next evaluation"
                )
            except TimeoutError:
                pass

    def _carry(self) -> PolicyInput:
        return PolicyInput(
            team=self.team,
            pool=self.pool,
            spec=self.spec,
            state=self.pstate,
            last_sent=self.last_sent,
            decisions=self.decisions,
            current=self.current,
            last_error=self.last_error,
            history_budget=self.history_budget,
            members=self.members,
        )

    def _next_wait_s(self) -> float:
        """The evaluation interval; for a schedule, no later than the next window opening or closing."""
        wait = self.spec.evaluation_interval
        if self.spec.type == "schedule" and self.spec.schedule is not None:
            now = workflow.now()
            try:
                active, start, end = schedule_window_active(self.spec.schedule, now)
            except Exception:  # noqa: BLE001 - recorded by the evaluation as EvaluationError; keep the interval
                return max(wait, 0.001)
            edge = end if active else start
            if edge is not None:
                wait = min(wait, max((edge - now).total_seconds(), 0.0))
        return max(wait, 0.001)

    async def _read(self) -> MetricReading:
        source = self.spec.source if self.spec.is_metric_policy else None
        timeout_s = (source.timeout_s if source is not None else 0.0) + 10.0
        try:
            return await workflow.execute_local_activity_method(
                PolicyMetricActivities.read_policy_metric,
                MetricReadRequest(
                    team=self.team,
                    pool=self.pool,
                    source=source,
                    servers=self.members,
                    instance_warmup_s=self.spec.instance_warmup_s,
                ),
                start_to_close_timeout=timedelta(seconds=timeout_s),
                schedule_to_close_timeout=timedelta(seconds=2 * timeout_s + 1),
                retry_policy=READ_RETRY,
                summary=f"read {self.spec.metric or 'pool size'}",
            )
        except ActivityError as e:
            cause = e.cause if e.cause is not None else e
            return MetricReading(value=None, error=f"metric read failed: {cause}", current=self.current or 0)

    def _evaluate_policy(self, reading: MetricReading) -> tuple[Decision, PolicyState]:
        return evaluation.evaluate_policy(
            self.spec,
            current=reading.current,
            metric=reading.value,
            now=workflow.now(),
            state=self.pstate,
            servers=reading.servers,
        )

    def _decide(self, reading: MetricReading) -> Decision:
        """The pure decision (`domain.evaluation`); an exception from it never wedges the loop: it becomes
        a held decision with reason EvaluationError and the message."""
        try:
            decision, self.pstate = self._evaluate_policy(reading)
        except Exception as e:  # noqa: BLE001 - any fault of the decision code, recorded and held
            workflow.logger.warning("policy %s: evaluation failed: %s", self.spec.name, e)
            decision = evaluation.evaluation_error_decision(
                self.spec, current=reading.current, now=workflow.now(), error=e
            )
            self.last_error = decision.formula
            self.pstate = self.pstate.model_copy(
                update={"evaluations": self.pstate.evaluations + 1, "last_decision": decision}
            )
        return decision

    async def _evaluate(self) -> None:
        reading = await self._read()
        self.current = reading.current
        self.last_error = reading.error
        decision = self._decide(reading)
        rec = decision.as_recommendation()
        changed = not same_recommendation(self.last_sent, rec)
        # re-send an unchanged recommendation now and then: a pool whose workflow chain was re-created
        # starts with no recommendations and would otherwise ignore this policy until it changes its mind
        stale = self._last_sent_at is None or workflow.now() - self._last_sent_at >= RESEND_AFTER
        if not changed and not stale:
            return
        if not await self._send(rec) or not changed:
            return  # not delivered (tried again next evaluation), or only a refresh: no new decision
        self.decisions = (self.decisions + [decision])[-MAX_DECISIONS:]
        await workflow.execute_activity_method(
            PolicyMetricActivities.record_policy_decision,
            DecisionRecord(team=self.team, pool=self.pool, policy=self.spec.name, decision=decision),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=BOOKKEEPING_RETRY,
            summary=f"record decision {decision.current}->{decision.desired} {decision.reason.value}",
        )

    async def _send(self, rec: Recommendation) -> bool:
        handle = workflow.get_external_workflow_handle(pool_workflow_id(self.team, self.pool))
        try:
            await handle.signal(PoolSignals.recommend, rec)
        except FailureError as e:
            # the pool is not running (deleted or not started yet): try again at the next evaluation
            self.last_error = f"could not signal pool: {e}"
            return False
        self.last_sent = rec
        self._last_sent_at = workflow.now()
        return True

    # ---- search attributes ------------------------------------------------------------------------

    def _publish_search_attributes(self) -> None:
        """Upsert PolicyId/PoolId/TeamId when missing and PolicyState when it changed (one event each time)."""
        current = workflow.info().typed_search_attributes
        updates = []
        wanted = {
            sa.POLICY_ID: f"{self.team}/{self.pool}/{self.spec.name}",
            sa.POOL_ID: pool_key(self.team, self.pool),
            sa.TEAM_ID: self.team,
            sa.POLICY_STATE: policy_status(self.spec, self.pstate),
        }
        for key, value in wanted.items():
            if current.get(key) != value:
                updates.append(key.value_set(value))
        if updates:
            workflow.upsert_search_attributes(updates)

    def _changed(self) -> None:
        self._publish_search_attributes()
        self._wake = True

    # ---- messages ---------------------------------------------------------------------------------

    @workflow.signal
    def pause(self) -> None:
        """Stop acting: the policy tells the pool it abstains until `resume`."""
        self.pstate = evaluation.pause(self.pstate)
        self._changed()

    @workflow.signal
    def resume(self) -> None:
        """Act again (every pause flag cleared; scale-in waits a full stabilization window)."""
        self.pstate = evaluation.resume(self.pstate)
        self._changed()

    @workflow.signal
    def toggle(self) -> None:
        self.pstate = evaluation.toggle(self.pstate)
        self._changed()

    @workflow.signal
    def pause_scale_in(self) -> None:
        self.pstate = evaluation.pause(self.pstate, scale_in=True, scale_out=False)
        self._changed()

    @workflow.signal
    def pause_scale_out(self) -> None:
        self.pstate = evaluation.pause(self.pstate, scale_in=False, scale_out=True)
        self._changed()

    @workflow.signal
    def update_spec(self, spec: PolicySpec) -> None:
        """A re-applied spec (the pool sends it): takes effect at once (the policy re-evaluates now).

        A pause or resume by signal survives a re-apply, unless `is_active` itself changed in the file
        (true -> false pauses, false -> true resumes), as `kubectl apply` merges against the last applied."""
        if spec.name != self.spec.name:
            workflow.logger.warning(
                "spec for policy %s sent to policy %s: ignored", spec.name, self.spec.name
            )
            return
        if spec.is_active != self.spec.is_active:
            self.pstate = evaluation.resume(self.pstate) if spec.is_active else evaluation.pause(self.pstate)
        self.spec = spec
        self._changed()

    @workflow.signal
    def pool_members(self, view: PoolMembers) -> None:
        """The pool's membership changed (a server joined, left or changed health); the next evaluation
        counts it (no extra evaluation: history grows with decisions, not with membership changes)."""
        self.members = list(view.servers)

    @workflow.query
    def state(self) -> PolicyStateView:
        now = workflow.now()
        remaining: dict[str, float] = {}
        moved = [d for d in self.decisions if d.direction is not Direction.NONE and not d.abstain]
        if moved:
            last = moved[-1]
            out_until = last.at + timedelta(seconds=last.scale_out_cooldown_s)
            in_until = last.at + timedelta(seconds=last.scale_in_cooldown_s)
            remaining["scale_out"] = (
                max(0.0, (out_until - now).total_seconds()) if last.direction is Direction.UP else 0.0
            )
            remaining["scale_in"] = max(0.0, (in_until - now).total_seconds())
        return PolicyStateView(
            team=self.team,
            pool=self.pool,
            policy=self.spec.name,
            type=self.spec.type,
            strategy=self.spec.strategy,
            status=policy_status(self.spec, self.pstate),
            paused=self.pstate.paused,
            scale_in_paused=self.pstate.scale_in_paused,
            scale_out_paused=self.pstate.scale_out_paused,
            dry_run=self.spec.dry_run,
            evaluation_interval=self.spec.evaluation_interval,
            evaluations=self.pstate.evaluations,
            current=self.current,
            last_metric=self.pstate.last_metric,
            last_metric_at=self.pstate.last_metric_at,
            last_error=self.last_error,
            last_recommendation=self.last_sent,
            last_reason=self.last_sent.reason.value if self.last_sent else None,
            last_decision=self.pstate.last_decision,
            decisions=self.decisions,
            cooldown_remaining_s=remaining,
            next_evaluation_at=self._next_at,
            spec=self.spec.model_dump(mode="json", exclude_defaults=True),
        )
