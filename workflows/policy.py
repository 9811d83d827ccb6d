"""PolicyWorkflow: one scaling policy for as long as it is in its pool's spec.

A metric policy's evaluations run inside a long-lived heartbeating activity (`policy_loop`,
activities/policy_loop.py): it reads the metric for the pool's members (the pool signals them) every
`evaluation_interval`, evaluates with the pure code in `domain.evaluation`, and returns only when the
recommendation differs from the one last sent, at the end of its lease, or when this workflow restarts
it (a signal changed the policy: pause, resume, toggle, a new spec, new members; the loop hears of it at
its check just before its next evaluation, so a change takes effect within one interval, and a full
pause at once: this workflow sends the abstain itself). This workflow then
signals the pool's `recommend`, keeps the decision (the last MAX_DECISIONS) and writes it to the store,
and starts the next loop with the state the last one returned. History grows with decisions, not with
evaluations. A schedule policy needs no metric: it is evaluated here, at its window's edges (a workflow
timer), on signals and on membership changes.

All state is one model, `PolicyRunState` (`self.state`), passed whole through continue-as-new; the pool
owns the cooldowns (they are durable there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError, FailureError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from poolctl import search_attributes as sa
    from poolctl.activities.policy_loop import PolicyLoopActivities, read_limit_s, resume_progress
    from poolctl.activities.policy_metrics import PolicyMetricActivities
    from poolctl.domain import evaluation
    from poolctl.domain.decision import Decision, Direction, Recommendation, same_recommendation
    from poolctl.domain.evaluation import PolicyState
    from poolctl.domain.names import pool_key, pool_workflow_id
    from poolctl.domain.policy_spec import PolicySpec
    from poolctl.domain.policy_state import (
        MAX_DECISIONS,
        DecisionRecord,
        PolicyInput,
        PolicyLoopOutcome,
        PolicyLoopParams,
        PolicyRunState,
        PolicyStateView,
        loop_heartbeat_every_s,
        loop_heartbeat_timeout_s,
        policy_status,
    )
    from poolctl.domain.pool_state import PoolMembers
    from poolctl.domain.schedule import schedule_window_active
    from poolctl.workflows.history import history_too_long
    from poolctl.workflows.pool_api import PoolSignals
    from poolctl.workflows.retry_policies import BOOKKEEPING_RETRY, LOOP_RETRY

# Re-send an unchanged recommendation when the pool signals this policy (a re-created pool chain starts
# with no recommendations) and the last send is older than this; a lease end re-sends after REFRESH_AFTER.
RESEND_AFTER = timedelta(minutes=5)
REFRESH_AFTER = timedelta(hours=2)
# A full pause is sent to the pool by this workflow at once (`_abstain_if_paused`): a new command on runs
# recorded before it (docs/workflow-changes.md).
PAUSE_AT_ONCE_PATCH = "policy-pause-at-once"


@workflow.defn
class PolicyWorkflow:
    @workflow.init
    def __init__(self, inp: PolicyInput) -> None:
        # a copy: signals taken before the run starts change this run's state, and the team check
        # (team_interceptor) verifies the start's proof against the input after them: it refused a
        # continue-as-new run that signals reached first, and the chain ended
        inp = inp.model_copy(deep=True)
        self.team = inp.team
        self.pool = inp.pool
        self.history_budget = inp.history_budget
        self.lease_s = inp.lease_s
        self.state: PolicyRunState = inp.run_state()  # all that survives continue-as-new
        self._restart = False  # stop the running loop and start the next with the current state
        self._evaluate_now = False  # ... and evaluate at once (the policy itself changed)
        self._pool_asked = False  # a message came from the pool (it may be a new pool chain)
        # pause/resume changes since the running loop started: applied again to the state it returns
        self._ops: list[Callable[[PolicyState], PolicyState]] = []

    @property
    def spec(self) -> PolicySpec:
        return self.state.spec

    # ---- the loop -------------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: PolicyInput) -> str:
        self._publish_search_attributes()
        while True:
            if self.spec.type == "schedule":
                await self._schedule_round()
            else:
                outcome = await self._loop()
                if workflow.cancellation_reason() is not None:
                    # stopped while the loop handed its state back (which absorbs the cancellation)
                    raise asyncio.CancelledError("policy stopped")
                if outcome is not None:
                    await self._handle(outcome)
            if history_too_long(self.history_budget):
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self._carry())

    def _carry(self) -> PolicyInput:
        return PolicyInput(
            team=self.team,
            pool=self.pool,
            spec=self.spec,
            history_budget=self.history_budget,
            lease_s=self.lease_s,
            state=self.state,
        )

    async def _loop(self) -> PolicyLoopOutcome | None:
        """Run one evaluation loop until it returns, or until a signal asks for a restart (then it is
        cancelled and returns its state). None when it was cancelled before it could hand its state back."""
        if self._evaluate_now:
            await self._abstain_if_paused()  # paused while no loop ran: say so before reading any metric
        hb_timeout = loop_heartbeat_timeout_s(self.spec.evaluation_interval)
        params = PolicyLoopParams(
            policy_id=workflow.info().workflow_id,
            team=self.team,
            pool=self.pool,
            spec=self.spec,
            members=self.state.members,
            evaluation=self.state.evaluation,
            last_sent=self.state.last_sent,
            current=self.state.current,
            last_error=self.state.last_error,
            next_evaluation_at=self.state.next_evaluation_at,
            evaluate_now=self._evaluate_now,
            lease_s=self.lease_s,
            heartbeat_every_s=loop_heartbeat_every_s(hb_timeout),
        )
        self._restart = self._evaluate_now = False
        self._ops = []
        handle = workflow.start_activity_method(
            PolicyLoopActivities.policy_loop,
            params,
            start_to_close_timeout=timedelta(
                seconds=self.lease_s + self.spec.evaluation_interval + read_limit_s(params) + 60
            ),
            heartbeat_timeout=timedelta(seconds=hb_timeout),
            retry_policy=LOOP_RETRY,
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            summary=f"evaluate {self.spec.metric or self.spec.type} every {self.spec.evaluation_interval:g}s",
        )
        try:
            await workflow.wait_condition(lambda: handle.done() or self._restart)
            if not handle.done():
                handle.cancel()  # it hands its state back (at its check before its next evaluation)
                await self._abstain_if_paused()
                await workflow.wait_condition(handle.done)
        except asyncio.CancelledError:
            handle.cancel()  # the policy is being stopped: stop evaluating now, without waiting for it
            raise
        try:
            return await handle
        except ActivityError as e:
            if not isinstance(e.cause, CancelledError):
                raise
            # cancelled while it was not running (between retries): its last heartbeat, if any, is the state
            progress = resume_progress(e.cause.details)
            if progress is not None:
                self.state.evaluation = self._with_ops(progress.evaluation)
                self.state.current = progress.current
                self.state.last_error = progress.last_error
                self.state.next_evaluation_at = progress.next_evaluation_at
            return None

    async def _abstain_if_paused(self) -> None:
        """A full pause (or `is_active: false`) takes effect at once: the pool hears that this policy
        abstains now, not when the cancelled loop hands its state back (up to one interval later)."""
        st = self.state
        # the size the next loop will see (its reading's `current` is the members' count): an abstain holds
        # it, and the same hold from that loop is then no news (not sent, not recorded, twice)
        decision = evaluation.paused_decision(
            self.spec, st.evaluation, current=len(st.members), now=workflow.now()
        )
        if decision is not None and workflow.patched(PAUSE_AT_ONCE_PATCH):
            await self._act(decision)

    async def _handle(self, outcome: PolicyLoopOutcome) -> None:
        """Take the loop's state; send a changed recommendation (or a due refresh) and record the decision."""
        st = self.state
        st.loops += 1
        st.evaluation = self._with_ops(outcome.evaluation)
        st.current = outcome.current
        st.last_error = outcome.last_error
        st.next_evaluation_at = outcome.next_evaluation_at
        if self._evaluate_now:
            # the policy changed while this loop ran (pause, resume, toggle, a new spec; the loop learns of
            # it at its check before its next evaluation, so it may have decided in between): its decision
            # is stale, and the next loop evaluates at once with the change
            return
        if outcome.decision is None or not await self._act(outcome.decision):
            return
        d = outcome.decision
        if d.direction is not Direction.NONE and not d.abstain and self.state.next_evaluation_at is not None:
            # the pool is about to change its membership: evaluate next with the new members (a running
            # loop would learn of them only at its check before its next evaluation), or at the due time
            wait_s = (self.state.next_evaluation_at - workflow.now()).total_seconds()
            if wait_s > 0 and not self._restart:
                try:
                    await workflow.wait_condition(
                        lambda: self._restart,
                        timeout=timedelta(seconds=wait_s),
                        timeout_summary="new members",
                    )
                except TimeoutError:
                    pass

    def _with_ops(self, returned: PolicyState) -> PolicyState:
        """The state a loop returned, with the pause/resume signals that arrived while it ran."""
        for op in self._ops:
            returned = op(returned)
        self._ops = []
        return returned

    async def _schedule_round(self) -> None:
        """A schedule policy: evaluate now (no metric to read), then wait for the window's next edge, a
        signal, a membership change or the refresh."""
        self._restart = self._evaluate_now = False
        self._ops = []  # applied already: this state is the only one
        now = workflow.now()
        decision, self.state.evaluation, error = evaluation.evaluate_or_hold(
            self.spec, current=len(self.state.members), metric=None, now=now, state=self.state.evaluation
        )
        self.state.current = len(self.state.members)
        self.state.last_error = error
        await self._act(decision)
        wait_s = self._next_edge_s(now)
        self.state.next_evaluation_at = now + timedelta(seconds=wait_s)
        try:
            await workflow.wait_condition(
                lambda: self._restart,
                timeout=timedelta(seconds=wait_s),
                timeout_summary="schedule window edge",
            )
        except TimeoutError:
            pass

    def _next_edge_s(self, now: datetime) -> float:
        """Seconds to the schedule window's next opening or closing (the refresh period at most)."""
        wait = REFRESH_AFTER.total_seconds()
        assert self.spec.schedule is not None
        try:
            active, start, end = schedule_window_active(self.spec.schedule, now)
        except Exception:  # noqa: BLE001 - recorded by the evaluation as EvaluationError; wait the refresh
            return wait
        edge = end if active else start
        if edge is not None:
            wait = min(wait, max((edge - now).total_seconds(), 0.0))
        return max(wait, 0.001)

    async def _act(self, decision: Decision) -> bool:
        """Signal the pool when the recommendation changed (or a refresh is due); record a changed one.
        True when a changed recommendation was sent."""
        rec = decision.as_recommendation()
        changed = not same_recommendation(self.state.last_sent, rec)
        since = None if self.state.last_sent_at is None else workflow.now() - self.state.last_sent_at
        # re-send an unchanged recommendation now and then: a pool whose workflow chain was re-created
        # starts with no recommendations and would otherwise ignore this policy until it changes its mind
        stale = since is None or since >= (RESEND_AFTER if self._pool_asked else REFRESH_AFTER)
        self._pool_asked = False
        if not changed and not stale:
            return False
        if not await self._send(rec) or not changed:
            return False  # not delivered (tried again at the next evaluation), or only a refresh
        self.state.decisions = (self.state.decisions + [decision])[-MAX_DECISIONS:]
        await workflow.execute_activity_method(
            PolicyMetricActivities.record_policy_decision,
            DecisionRecord(team=self.team, pool=self.pool, policy=self.spec.name, decision=decision),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=BOOKKEEPING_RETRY,
            summary=f"record decision {decision.current}->{decision.desired} {decision.reason.value}",
        )
        return True

    async def _send(self, rec: Recommendation) -> bool:
        handle = workflow.get_external_workflow_handle(pool_workflow_id(self.team, self.pool))
        try:
            await handle.signal(PoolSignals.recommend, rec)
        except FailureError as e:
            # the pool is not running (deleted or not started yet): try again at the next evaluation
            self.state.last_error = f"could not signal pool: {e}"
            return False
        self.state.last_sent = rec
        self.state.last_sent_at = workflow.now()
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
            sa.POLICY_STATE: policy_status(self.spec, self.state.evaluation),
        }
        for key, value in wanted.items():
            if current.get(key) != value:
                updates.append(key.value_set(value))
        if updates:
            workflow.upsert_search_attributes(updates)

    def _apply(self, op: Callable[[PolicyState], PolicyState]) -> None:
        """A pause/resume change: now, and again on the state the running loop returns."""
        self.state.evaluation = op(self.state.evaluation)
        self._ops.append(op)
        self._changed()

    def _changed(self) -> None:
        """The policy itself changed: publish its state and restart the loop, evaluating at once."""
        self._publish_search_attributes()
        self._restart = self._evaluate_now = True

    # ---- messages ---------------------------------------------------------------------------------

    @workflow.signal
    def pause(self) -> None:
        """Stop acting: the policy tells the pool it abstains until `resume`."""
        self._apply(evaluation.pause)

    @workflow.signal
    def resume(self) -> None:
        """Act again (every pause flag cleared; scale-in waits a full stabilization window)."""
        self._apply(evaluation.resume)

    @workflow.signal
    def toggle(self) -> None:
        self._apply(evaluation.toggle)

    @workflow.signal
    def pause_scale_in(self) -> None:
        self._apply(partial(evaluation.pause, scale_in=True, scale_out=False))

    @workflow.signal
    def pause_scale_out(self) -> None:
        self._apply(partial(evaluation.pause, scale_in=False, scale_out=True))

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
        self._pool_message()
        if spec == self.spec:
            return  # the pool re-sent it (e.g. a new pool chain): nothing else to do
        was_active, self.state.spec = self.spec.is_active, spec
        if spec.is_active != was_active:
            self._apply(evaluation.resume if spec.is_active else evaluation.pause)
        self._changed()

    @workflow.signal
    def pool_members(self, view: PoolMembers) -> None:
        """The pool's membership changed (a server joined, left or changed health): the loop restarts with
        it and keeps its schedule (no extra evaluation)."""
        self._pool_message()
        if view.servers == self.state.members:
            return
        self.state.members = list(view.servers)
        self._restart = True

    def _pool_message(self) -> None:
        """The pool sent something (a new pool chain re-sends spec and members): if the last send is older
        than RESEND_AFTER, restart the loop so the recommendation is sent again."""
        self._pool_asked = True
        since = None if self.state.last_sent_at is None else workflow.now() - self.state.last_sent_at
        if since is None or since >= RESEND_AFTER:
            self._restart = True

    @workflow.query(name="state")
    def view(self) -> PolicyStateView:
        """The policy as this workflow knows it. The evaluation counters and last metric are as of the loop's
        last return; `poolctl policy show` adds the running loop's heartbeat (`with_progress`)."""
        st = self.state
        now = workflow.now()
        remaining: dict[str, float] = {}
        moved = [d for d in st.decisions if d.direction is not Direction.NONE and not d.abstain]
        if moved:
            last = moved[-1]
            out_until = last.at + timedelta(seconds=last.scale_out_cooldown_s)
            in_until = last.at + timedelta(seconds=last.scale_in_cooldown_s)
            remaining["scale_out"] = (
                max(0.0, (out_until - now).total_seconds()) if last.direction is Direction.UP else 0.0
            )
            remaining["scale_in"] = max(0.0, (in_until - now).total_seconds())
        ev = st.evaluation
        return PolicyStateView(
            team=self.team,
            pool=self.pool,
            policy=self.spec.name,
            type=self.spec.type,
            strategy=self.spec.strategy,
            status=policy_status(self.spec, ev),
            paused=ev.paused,
            scale_in_paused=ev.scale_in_paused,
            scale_out_paused=ev.scale_out_paused,
            dry_run=self.spec.dry_run,
            evaluation_interval=self.spec.evaluation_interval,
            evaluations=ev.evaluations,
            current=st.current,
            last_metric=ev.last_metric,
            last_metric_at=ev.last_metric_at,
            last_error=st.last_error,
            last_recommendation=st.last_sent,
            last_reason=st.last_sent.reason.value if st.last_sent else None,
            last_decision=ev.last_decision,
            decisions=st.decisions,
            cooldown_remaining_s=remaining,
            next_evaluation_at=st.next_evaluation_at,
            spec=self.spec.model_dump(mode="json", exclude_defaults=True),
        )
