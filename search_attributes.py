"""The custom search attributes poolctl's workflows set, so the Temporal UI can filter them."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

POOL_ID = SearchAttributeKey.for_keyword("PoolId")
TEAM_ID = SearchAttributeKey.for_keyword("TeamId")
POOL_STATE = SearchAttributeKey.for_keyword("PoolState")
POLICY_ID = SearchAttributeKey.for_keyword("PolicyId")
POLICY_STATE = SearchAttributeKey.for_keyword("PolicyState")
SERVER_ID = SearchAttributeKey.for_keyword("ServerId")
HEALTH_STATE = SearchAttributeKey.for_keyword("HealthState")

ALL = [POOL_ID, TEAM_ID, POOL_STATE, POLICY_ID, POLICY_STATE, SERVER_ID, HEALTH_STATE]


def dev_server_flags() -> list[str]:
    """`--search-attribute Name=Keyword` flags that register every attribute at dev-server start."""
    flags: list[str] = []
    for key in ALL:
        flags += ["--search-attribute", f"{key.name}=Keyword"]
    return flags
