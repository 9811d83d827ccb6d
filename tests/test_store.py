"""The store on SQLite and on PostgreSQL: migrations, applying specs, servers, membership, events."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa_core

from poolctl.starter.specfile import parse_spec
from poolctl.store import inventory
from poolctl.store.db import get_engine, migrate, session_scope

SPEC = """
team: ops
pools:
  - name: api
    min_servers: 2
    max_servers: 8
    desired_servers: 3
    server_weight: 2
"""


def test_migrations_create_every_table_and_are_idempotent(db_url: str):
    migrate(db_url)
    migrate(db_url, "head")
    tables = set(sa_core.inspect(get_engine(db_url)).get_table_names())
    assert {
        "teams",
        "server_pools",
        "servers",
        "server_pool_server",
        "scaling_policies",
        "load_balancers",
        "health_checks",
        "scaling_events",
        "alembic_version",
    } <= tables


def test_apply_document_creates_then_reports_unchanged_then_updated(db_url: str):
    doc = parse_spec(SPEC, "t.yaml")
    with session_scope(db_url) as s:
        [c] = inventory.apply_document(s, doc)
        assert c.action in ("created", "unchanged")  # PostgreSQL schema is shared by the session
    with session_scope(db_url) as s:
        [c] = inventory.apply_document(s, doc)
        assert c.action == "unchanged"
    doc2 = parse_spec(SPEC.replace("max_servers: 8", "max_servers: 9"), "t.yaml")
    with session_scope(db_url) as s:
        [c] = inventory.apply_document(s, doc2)
        assert c.action == "updated" and c.changed_fields == ["max_servers"]
    with session_scope(db_url) as s:
        pool = inventory.get_pool(s, "ops", "api")
        assert (pool.min_servers, pool.max_servers, pool.desired_servers) == (2, 9, 3)
    with session_scope(db_url) as s:
        inventory.apply_document(s, doc)  # put it back for the next test on the shared schema


def test_servers_membership_and_events_round_trip(db_url: str):
    with session_scope(db_url) as s:
        inventory.apply_document(s, parse_spec(SPEC, "t.yaml"))
    now = datetime.now(UTC)
    key = f"scale/ops/api/{now.timestamp()}"
    sid = f"srv-{int(now.timestamp() * 1e6)}"
    with session_scope(db_url) as s:
        inventory.record_server(
            s,
            team="ops",
            pool="api",
            server_id=sid,
            provider="local",
            idempotency_key=key,
            host="127.0.0.1",
            port=1234,
            state="running",
            created_at=now,
            weight=2,
        )
        # recording twice is idempotent
        inventory.record_server(
            s,
            team="ops",
            pool="api",
            server_id=sid,
            provider="local",
            idempotency_key=key,
            host="127.0.0.1",
            port=1234,
            state="running",
            created_at=now,
            weight=2,
        )
        inventory.start_scaling_event(
            s,
            team="ops",
            pool="api",
            event_key=key,
            direction="up",
            from_count=0,
            to_count=1,
            cause="test",
            policy_name=None,
            decision={"reason": "ManualScale"},
            started_at=now,
        )
        inventory.start_scaling_event(
            s,
            team="ops",
            pool="api",
            event_key=key,
            direction="up",
            from_count=0,
            to_count=1,
            cause="test",
            policy_name=None,
            decision=None,
            started_at=now,
        )
    with session_scope(db_url) as s:
        assert sid in {r.id for r in inventory.list_servers(s, "ops", "api")}
        assert inventory.member_weights(s, "ops", "api")[sid] == 2
        inventory.finish_scaling_event(
            s, event_key=key, status="succeeded", error=None, servers={"added": [sid]}, finished_at=now
        )
    with session_scope(db_url) as s:
        [ev] = [e for e in inventory.list_events(s, "ops", "api", 500) if e.event_key == key]
        assert ev.status == "succeeded" and ev.decision is None or ev.decision == {"reason": "ManualScale"}
        assert ev.servers == {"added": [sid]}
        inventory.mark_server_terminated(s, sid)
        inventory.mark_server_terminated(s, sid)  # twice is fine
    with session_scope(db_url) as s:
        assert sid not in {r.id for r in inventory.list_servers(s, "ops", "api")}
        assert sid in {r.id for r in inventory.list_servers(s, "ops", "api", include_terminated=True)}
        assert sid not in inventory.member_weights(s, "ops", "api")


def test_a_failed_transaction_writes_nothing(db_url: str):
    doc = parse_spec(SPEC.replace("api", "rollback-me"), "t.yaml")
    try:
        with session_scope(db_url) as s:
            inventory.apply_document(s, doc)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    with session_scope(db_url) as s:
        assert inventory.find_pool(s, "ops", "rollback-me") is None
