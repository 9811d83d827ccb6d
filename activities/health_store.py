"""Activity that writes a server's health (state, counters, last result, transitions) to the store."""

from __future__ import annotations

import asyncio

from sqlalchemy import select
from temporalio import activity

from poolctl.domain.errors import NotFoundError
from poolctl.domain.health_messages import HealthRecord
from poolctl.settings import Settings
from poolctl.store import inventory
from poolctl.store.db import session_scope
from poolctl.store.models import HealthCheck, Server

MAX_STORED_TRANSITIONS = 500


class HealthStoreActivities:
    def __init__(self, settings: Settings):
        self.settings = settings

    @activity.defn(name="record_health")
    async def record_health(self, rec: HealthRecord) -> None:
        await asyncio.to_thread(self._record, rec)

    def _record(self, rec: HealthRecord) -> None:
        with session_scope(self.settings.resolved_database_url) as s:
            try:
                pool = inventory.get_pool(s, rec.team, rec.pool)
            except NotFoundError:
                return  # pool deleted meanwhile
            if s.get(Server, rec.server_id) is None:
                return
            row = s.scalar(
                select(HealthCheck).where(
                    HealthCheck.pool_id == pool.id, HealthCheck.server_id == rec.server_id
                )
            )
            if row is None:
                row = HealthCheck(
                    pool_id=pool.id,
                    server_id=rec.server_id,
                    created_at=inventory.utcnow(),
                    transitions={"items": []},
                )
                s.add(row)
            st = rec.status
            row.type = rec.check_type
            row.spec = rec.spec.model_dump(mode="json")
            row.status = "config_error" if rec.config_error else st.state.value
            row.consecutive_successes = st.consecutive_successes
            row.consecutive_failures = st.consecutive_failures
            row.last_check_at = st.last_probe_at
            row.last_latency_ms = st.last_result.latency_ms if st.last_result else None
            row.last_error = rec.config_error or (st.last_result.error if st.last_result else None)
            row.last_transition_at = st.last_transition_at
            if rec.transition is not None:
                items = list((row.transitions or {}).get("items", []))
                new = rec.transition.model_dump(mode="json")
                if items and (items[-1].get("at"), items[-1].get("to_state")) == (new["at"], new["to_state"]):
                    return  # a retry of an attempt whose commit went through: recorded already
                items.append(new)
                row.transitions = {"items": items[-MAX_STORED_TRANSITIONS:]}
                server = s.get(Server, rec.server_id)
                if server is not None:
                    server.health = rec.transition.to_state.value
