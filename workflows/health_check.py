"""HealthCheckWorkflow: one check on one server for as long as the server lives. A long-lived,
heartbeating activity (`watch_target`) runs the probe loop and returns only on a transition, a
configuration error or the end of its lease; this workflow records what came back, tells the pool,
and starts the next watch. History grows with transitions, not with probes."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError

with workflow.unsafe.imports_passed_through():
    from poolctl import search_attributes as sa
    from poolctl.activities.health_store import HealthStoreActivities
    from poolctl.activities.watch import WatchOutcome, WatchParams, watch_target_activity
    from poolctl.domain.health_messages import (
        HealthCheckState,
        HealthInput,
        HealthRecord,
        HealthView,
        ServerHealthChange,
    )
    from poolctl.domain.health_spec import HealthCheckSpec
    from poolctl.domain.names import pool_workflow_id
    from poolctl.workflows.history import history_too_long
    from poolctl.workflows.pool_api import PoolSignals
    from poolctl.workflows.retry_policies import BOOKKEEPING_RETRY, WATCH_RETRY


@workflow.defn
class HealthCheckWorkflow:
    @workflow.init
    def __init__(self, inp: HealthInput) -> None:
        # a copy: signals taken before the run starts change this run's state, and the team check
        # (team_interceptor) verifies the start's proof against the input after them: it refused a
        # continue-as-new run that signals reached first, and the chain ended
        inp = inp.model_copy(deep=True)
        self.inp = inp
        self.check_state: HealthCheckState = inp.state  # all that survives continue-as-new
        self._published_state: str | None = None

    @workflow.run
    async def run(self, inp: HealthInput) -> str:
        self._publish_state()
        while True:
            if self.check_state.pending_spec is not None:
                self.inp.spec, self.check_state.pending_spec = self.check_state.pending_spec, None
            try:
                outcome = await self._watch()
            except ActivityError as e:
                if isinstance(e.cause, CancelledError):
                    return "stopped"
                raise
            except asyncio.CancelledError:
                return "stopped"
            if outcome is None:
                continue  # the spec changed: start a watch with the new one
            self.check_state.watches += 1
            self.check_state.status = outcome.status
            self.check_state.next_probe_at = outcome.next_probe_at
            self.check_state.first_watch = False
            if outcome.transition is not None:  # counted with the state it led to: a query sees both
                self.check_state.transitions += 1
            await self._handle(outcome)
            if self.check_state.config_error:
                await workflow.sleep(
                    timedelta(seconds=self.inp.runtime.config_error_backoff_s),
                    summary="config error: retry later",
                )
            if history_too_long(self.inp.runtime.history_budget):
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self.inp.model_copy(update={"state": self.check_state}))

    async def _watch(self) -> WatchOutcome | None:
        spec = self.inp.spec
        rt = self.inp.runtime
        params = WatchParams(
            check_id=workflow.info().workflow_id,
            host=self.inp.host,
            port=self.inp.port,
            spec=spec,
            status=self.check_state.status,
            server_started_at=self.inp.server_started_at,
            lease_s=rt.lease_s,
            heartbeat_every_s=max(1.0, min(10.0, rt.heartbeat_timeout_s / 3)),
            next_probe_at=self.check_state.next_probe_at,
            first_probe_delay=0.0 if self.check_state.first_watch else None,
        )
        handle = workflow.start_activity(
            watch_target_activity,
            params,
            start_to_close_timeout=timedelta(seconds=rt.lease_s + spec.interval + spec.timeout + 60),
            heartbeat_timeout=timedelta(
                seconds=max(rt.heartbeat_timeout_s, 2 * params.heartbeat_every_s + spec.timeout)
            ),
            retry_policy=WATCH_RETRY,
            summary=f"watch {self.inp.server_id} ({spec.type}, every {spec.interval:g}s)",
        )
        try:
            await workflow.wait_condition(lambda: handle.done() or self.check_state.pending_spec is not None)
        except asyncio.CancelledError:
            handle.cancel()  # the check is being stopped: stop probing now, not at the next heartbeat
            raise
        if handle.done():
            return await handle
        handle.cancel()  # the spec changed: restart the watch with it
        try:
            return await handle  # it may have completed (e.g. with a transition) just before the cancel
        except ActivityError as e:
            if isinstance(e.cause, CancelledError):
                return None
            raise

    async def _handle(self, outcome: WatchOutcome) -> None:
        self.check_state.config_error = outcome.config_error if outcome.reason == "config_error" else None
        await workflow.execute_activity_method(
            HealthStoreActivities.record_health,
            HealthRecord(
                team=self.inp.team,
                pool=self.inp.pool,
                server_id=self.inp.server_id,
                check_type=self.inp.spec.type,
                spec=self.inp.spec,
                status=outcome.status,
                transition=outcome.transition,
                config_error=self.check_state.config_error,
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=BOOKKEEPING_RETRY,
            summary=f"record {outcome.reason}",
        )
        t = outcome.transition
        if t is None:
            return
        self._publish_state()
        pool = workflow.get_external_workflow_handle(pool_workflow_id(self.inp.team, self.inp.pool))
        try:
            await pool.signal(
                PoolSignals.server_health,
                ServerHealthChange(server_id=self.inp.server_id, state=t.to_state, at=t.at, reason=t.reason),
            )
        except Exception as e:  # noqa: BLE001 - the pool may be gone (deleted): nothing to tell
            workflow.logger.warning("could not signal pool: %s", e)

    def _publish_state(self) -> None:
        state = self.check_state.status.state.value
        if state != self._published_state:
            workflow.upsert_search_attributes([sa.HEALTH_STATE.value_set(state)])
            self._published_state = state

    @workflow.signal
    def update_spec(self, spec: HealthCheckSpec) -> None:
        """A changed check spec: the running watch is stopped and a new one starts with it (counters kept)."""
        self.check_state.pending_spec = spec

    @workflow.query
    def state(self) -> HealthView:
        return HealthView(
            server_id=self.inp.server_id,
            status=self.check_state.status,
            config_error=self.check_state.config_error,
            watches=self.check_state.watches,
            transitions=self.check_state.transitions,
        )
