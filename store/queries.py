"""The store as a read model: every query the command line may run (lists, servers, events, history,
balancer statistics). The CLI imports the store only through this module (and `db.session_scope`);
writes belong to the workflows' activities (tests/test_one_writer.py checks it)."""

from __future__ import annotations

from poolctl.store.balancer_stats import (
    balancer_totals,
    desired_members,
    get_balancer,
    last_rollup,
    list_balancers,
    list_rollups,
    pool_members,
)
from poolctl.store.inventory import (
    find_pool,
    get_pool,
    health_rows,
    list_events,
    list_pools,
    list_servers,
    member_weights,
    spec_hash,
)
from poolctl.store.policy_decisions import list_policy_decisions

__all__ = [
    "balancer_totals",
    "desired_members",
    "find_pool",
    "get_balancer",
    "get_pool",
    "health_rows",
    "last_rollup",
    "list_balancers",
    "list_events",
    "list_policy_decisions",
    "list_pools",
    "list_rollups",
    "list_servers",
    "member_weights",
    "pool_members",
    "spec_hash",
]
