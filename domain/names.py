"""Names: the rule for pool/policy/team names, and the workflow ids built from them."""

from __future__ import annotations

import re

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
NAME_RE = re.compile(NAME_PATTERN)


def pool_workflow_id(team: str, pool: str) -> str:
    return f"pool/{team}/{pool}"


def policy_workflow_id(team: str, pool: str, policy: str) -> str:
    return f"policy/{team}/{pool}/{policy}"


def scale_workflow_id(team: str, pool: str, seq: int) -> str:
    return f"scale/{team}/{pool}/{seq}"


def health_workflow_id(team: str, pool: str, server: str) -> str:
    return f"health/{team}/{pool}/{server}"


def pool_key(team: str, pool: str) -> str:
    """The stable identifier of a pool across the system (search attribute PoolId)."""
    return f"{team}/{pool}"


def ids_from_workflow_id(workflow_id: str) -> dict[str, str]:
    """The team / pool / policy / server a workflow id names (the id formats above, plus a notification's
    `notify/{team}/{pool}/...`), for log lines; {} for ids that name none (housekeeping schedules).

    `policy/t/web/cpu` -> {"team": "t", "pool": "web", "policy": "cpu"}."""
    kind, _, rest = workflow_id.partition("/")
    parts = rest.split("/")
    fields = {
        "pool": ("team", "pool"),
        "scale": ("team", "pool"),
        "notify": ("team", "pool"),
        "policy": ("team", "pool", "policy"),
        "health": ("team", "pool", "server"),
    }.get(kind)
    if fields is None or len(parts) < len(fields) or not all(parts[: len(fields)]):
        return {}
    return dict(zip(fields, parts, strict=False))


def team_of_workflow_id(workflow_id: str) -> str | None:
    """The team a workflow id names (`pool/ops/web` -> "ops"; the formats `ids_from_workflow_id` reads), or
    None for an id that names no team (the system's workflows: housekeeping, balancer statistics) or whose
    team part is not a team name."""
    team = ids_from_workflow_id(workflow_id).get("team")
    return team if team is not None and NAME_RE.match(team) else None
