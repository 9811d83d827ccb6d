"""Activities that keep a pool's load balancers in line with the pool, drain leaving servers, and roll
balancer statistics up into the store.

Which balancers: every `active` load balancer of the pool in the store (the applied spec). How they are
reached: `activities.balancers.registry.make_driver(spec, token)`: the builtin admin endpoint on
127.0.0.1:`effective_admin_port` with the token from `poolctl.balancer.credentials.balancer_token`, or
HAProxy's Runtime API socket named in the spec.

Call them from workflows (see `docs/architecture.md`):

    sync_pool_balancers(SyncBalancersInput(team, pool, members=[Member, ...]))  -> list[BalancerSyncReport]
    drain_server(DrainInput(team, pool, server_id, timeout_s=None))             -> DrainResult
        heartbeats while it waits: give it heartbeat_timeout ~10 s and a start_to_close_timeout longer
        than the drain timeout (the largest `drain_timeout_s` of the pool's balancers when None)
    rollup_balancer_stats(RollupInput())                                         -> RollupResult
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from pydantic import Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from poolctl.activities.balancers.base import (
    BALANCER_AUTH_ERROR,
    BALANCER_REJECTED_ERROR,
    BALANCER_UNAVAILABLE_ERROR,
    BalancerAuthError,
    BalancerDriver,
    BalancerError,
    BalancerRejectedError,
    UnknownMemberError,
)
from poolctl.activities.balancers.registry import make_driver
from poolctl.activities.heartbeats import activity_pacer
from poolctl.activities.kill_points import kill_point
from poolctl.balancer.credentials import balancer_token
from poolctl.domain.balancer_spec import LoadBalancerSpec
from poolctl.domain.balancing import BalancerStats, Member, SyncResult
from poolctl.domain.model import Message
from poolctl.settings import Settings
from poolctl.store import balancer_stats as store
from poolctl.store.db import session_scope

__all__ = [
    "BalancerActivities",
    "BalancerSyncReport",
    "DrainInput",
    "DrainResult",
    "RollupInput",
    "RollupResult",
    "SyncBalancersInput",
]


class SyncBalancersInput(Message):
    team: str
    pool: str
    members: list[Member] | None = Field(
        default=None,
        description="the desired members (address, weight, state); None: the pool's live servers from the store",
    )


class BalancerSyncReport(Message):
    balancer: str
    driver: str
    result: SyncResult | None = None
    error: str | None = None


class DrainInput(Message):
    team: str
    pool: str
    server_id: str
    timeout_s: float | None = Field(
        default=None, description="None: the largest drain_timeout_s of the balancers"
    )
    poll_interval_s: float = 0.5


class DrainResult(Message):
    server_id: str
    drained: bool = Field(description="True when no balancer had a connection left before the timeout")
    remaining_connections: dict[str, int] = Field(default_factory=dict, description="by balancer, at the end")
    waited_s: float = 0.0


class RollupInput(Message):
    team: str | None = None
    pool: str | None = None


class BalancerRollup(Message):
    team: str
    pool: str
    balancer: str
    requests: int = 0
    success_rate: float | None = None
    error: str | None = None


class RollupResult(Message):
    collected_at: datetime
    balancers: list[BalancerRollup] = Field(default_factory=list)


def _application_error(err: BalancerError, what: str) -> ApplicationError:
    if isinstance(err, BalancerAuthError):
        return ApplicationError(f"{what}: {err}", type=BALANCER_AUTH_ERROR, non_retryable=True)
    if isinstance(err, BalancerRejectedError):
        return ApplicationError(f"{what}: {err}", type=BALANCER_REJECTED_ERROR, non_retryable=True)
    return ApplicationError(f"{what}: {err}", type=BALANCER_UNAVAILABLE_ERROR)


def _heartbeat(*details: object) -> None:
    if activity.in_activity():
        activity.heartbeat(*details)


class BalancerActivities:
    def __init__(self, settings: Settings):
        self.settings = settings

    @property
    def _url(self) -> str:
        return self.settings.resolved_database_url

    def driver_for(self, spec: LoadBalancerSpec) -> BalancerDriver:
        """The one place a balancer spec becomes a driver (admin URL + token, or the HAProxy socket)."""
        token = balancer_token(self.settings) if spec.driver == "builtin" else ""
        return make_driver(spec, token, self.settings.balancer_admin_host)

    def _balancers(self, team: str, pool: str) -> list[LoadBalancerSpec]:
        with session_scope(self._url) as s:
            return [b.spec for b in store.list_balancers(s, team, pool) if b.spec.status == "active"]

    def _store_members(self, team: str, pool: str) -> list[Member]:
        with session_scope(self._url) as s:
            return store.pool_members(s, team, pool)

    @activity.defn(name="sync_pool_balancers")
    async def sync_pool_balancers(self, inp: SyncBalancersInput) -> list[BalancerSyncReport]:
        """Drive every active balancer of the pool to exactly `members` (idempotent: only the difference
        is applied; a restarted balancer is rebuilt). Tries every balancer, then fails (retryably) if one
        could not be reached; a refused token or request is not retried."""
        if any(m.state.value == "in_rotation" for m in inp.members or []):
            kill_point("registering_in_balancer")  # test-only: a server is being put in rotation
        specs = await asyncio.to_thread(self._balancers, inp.team, inp.pool)
        if not specs:
            return []
        members = inp.members
        if members is None:
            members = await asyncio.to_thread(self._store_members, inp.team, inp.pool)
        reports: list[BalancerSyncReport] = []
        failures: list[BalancerError] = []
        for spec in specs:
            try:
                async with self.driver_for(spec) as driver:
                    result = await driver.sync_members(members)
                reports.append(BalancerSyncReport(balancer=spec.name, driver=spec.driver, result=result))
                if result.changed:
                    activity.logger.info(
                        "balancer %s of %s/%s: +%s -%s ~%s",
                        spec.name, inp.team, inp.pool, result.added, result.removed, result.updated,
                    )  # fmt: skip
            except BalancerError as e:
                failures.append(e)
                reports.append(BalancerSyncReport(balancer=spec.name, driver=spec.driver, error=str(e)))
        hard = [e for e in failures if isinstance(e, BalancerAuthError | BalancerRejectedError)]
        if hard:
            raise _application_error(hard[0], f"sync balancers of {inp.team}/{inp.pool}")
        if failures:
            raise _application_error(failures[0], f"sync balancers of {inp.team}/{inp.pool}")
        return reports

    @activity.defn(name="drain_server")
    async def drain_server(self, inp: DrainInput) -> DrainResult:
        """Set the server draining on every active balancer of the pool, then wait (heartbeating) until it
        has no active connections anywhere or the timeout passes. The caller then terminates the server
        and syncs it out. A balancer that does not know the server counts as drained."""
        kill_point("draining")
        specs = await asyncio.to_thread(self._balancers, inp.team, inp.pool)
        timeout_s = (
            inp.timeout_s if inp.timeout_s is not None else max((s.drain_timeout_s for s in specs), default=0)
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        # polled every poll_interval_s; the server hears one heartbeat per 0.8 x the heartbeat timeout
        pacer = activity_pacer(inp.poll_interval_s) if activity.in_activity() else None
        beat = pacer.beat if pacer is not None else _heartbeat
        drivers: dict[str, BalancerDriver] = {}
        try:
            for spec in specs:
                driver = self.driver_for(spec)
                drivers[spec.name] = driver
                try:
                    await driver.drain(inp.server_id)
                except UnknownMemberError:
                    await driver.close()
                    del drivers[spec.name]
                except BalancerError as e:
                    raise _application_error(e, f"drain {inp.server_id} on {spec.name}") from e
            remaining: dict[str, int] = {}
            while True:
                remaining = {}
                for name, driver in drivers.items():
                    try:
                        n = await driver.active_connections(inp.server_id)
                    except BalancerError as e:
                        activity.logger.warning("balancer %s: %s (treated as drained)", name, e)
                        n = 0
                    if n:
                        remaining[name] = n
                waited = loop.time() - started
                beat({"remaining": remaining, "waited_s": waited})
                if not remaining or waited >= timeout_s:
                    break
                await asyncio.sleep(min(inp.poll_interval_s, max(timeout_s - waited, 0.01)))
        finally:
            if pacer is not None:
                pacer.close()
            for driver in drivers.values():
                await driver.close()
        return DrainResult(
            server_id=inp.server_id,
            drained=not remaining,
            remaining_connections=remaining,
            waited_s=round(loop.time() - started, 3),
        )

    async def read_stats(self, spec: LoadBalancerSpec) -> BalancerStats:
        async with self.driver_for(spec) as driver:
            return await driver.stats()

    @activity.defn(name="rollup_balancer_stats")
    async def rollup_balancer_stats(self, inp: RollupInput) -> RollupResult:
        """Read each active balancer's statistics and store what happened since the previous roll-up.
        An unreachable balancer is reported and skipped (the next run catches up: counters are cumulative)."""

        def load() -> list[store.StoredBalancer]:
            with session_scope(self._url) as s:
                return [b for b in store.list_balancers(s, inp.team, inp.pool) if b.spec.status == "active"]

        balancers = await asyncio.to_thread(load)
        now = datetime.now(UTC)
        out = RollupResult(collected_at=now)
        for b in balancers:
            _heartbeat(b.spec.name)
            try:
                stats = await self.read_stats(b.spec)
            except BalancerError as e:
                out.balancers.append(
                    BalancerRollup(team=b.team, pool=b.pool, balancer=b.spec.name, error=str(e))
                )
                continue

            def write(b: store.StoredBalancer = b, stats: BalancerStats = stats) -> BalancerRollup:
                with session_scope(self._url) as s:
                    row = store.record_rollup(s, b.id, stats, now)
                    return BalancerRollup(
                        team=b.team,
                        pool=b.pool,
                        balancer=b.spec.name,
                        requests=row.requests,
                        success_rate=row.success_rate,
                    )

            out.balancers.append(await asyncio.to_thread(write))
        return out
