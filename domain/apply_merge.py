"""What a re-applied pool spec changes, merged like `kubectl apply`: a field that other actors change at
run time (the pool's desired size) moves only when its value in the file differs from the last applied one.

Pure: the PoolWorkflow's `apply` update calls `merge_apply`; tests call it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from poolctl.domain.capacity import clamp
from poolctl.domain.pool_spec import PoolSpec, provider_change_refusal

APPLIED_BY = "spec"


@dataclass(frozen=True)
class ApplyPlan:
    """The outcome of one apply: the pool's new desired size, who set it, and the lines apply prints."""

    action: Literal["created", "updated", "unchanged"]
    desired: int
    desired_set_by: str
    changes: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def _show(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, dict | list):
        return f"{len(value)} item(s)" if isinstance(value, list) else "{...}"
    return str(value)


def _named(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(i.get("name")): i for i in items}


def spec_changes(old: PoolSpec, new: PoolSpec) -> list[str]:
    """One line per top-level field that differs (`server_weight 1 → 2`); named lists (policies, load
    balancers) say which entries were added, removed or changed."""
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    lines = []
    for key in PoolSpec.model_fields:
        if a.get(key) == b.get(key):
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, list) and isinstance(vb, list) and all(isinstance(x, dict) for x in va + vb):
            na, nb = _named(va), _named(vb)
            parts = [f"+{n}" for n in nb if n not in na]
            parts += [f"-{n}" for n in na if n not in nb]
            parts += [f"~{n}" for n in nb if n in na and na[n] != nb[n]]
            lines.append(f"{key} {' '.join(parts)}")
        elif isinstance(va, dict) or isinstance(vb, dict):
            lines.append(f"{key} changed")
        else:
            lines.append(f"{key} {_show(va)} → {_show(vb)}")
    return lines


def merge_apply(last: PoolSpec | None, new: PoolSpec, *, desired: int, desired_set_by: str) -> ApplyPlan:
    """Merge `new` against the last applied spec `last` (None: the first apply of this pool).

    - `desired_servers` moves the pool only when the file's value differs from `last`'s; otherwise the
      size that policies or an operator set (`desired`, set by `desired_set_by`) stays, clamped to the
      new `min_servers..max_servers`.
    - every other field is taken from the file.
    """
    target = new.initial_desired
    if last is None:
        return ApplyPlan("created", target, APPLIED_BY)
    changes = spec_changes(last, new)
    kept: list[str] = []
    if new.desired_servers != last.desired_servers:
        return ApplyPlan("updated", target, APPLIED_BY, changes, kept)
    merged = clamp(desired, new.min_servers, new.max_servers)
    if merged != desired:
        changes.append(
            f"desired {desired} → {merged} (clamped to {new.min_servers}..{new.max_servers}; "
            f"was set by {desired_set_by})"
        )
    elif desired != target:
        kept.append(f"desired {desired} kept (set by {desired_set_by})")
    set_by = desired_set_by if merged == desired else f"{desired_set_by}, clamped"
    return ApplyPlan("updated" if changes else "unchanged", merged, set_by, changes, kept)


def apply_refusal(
    *,
    team: str,
    current: PoolSpec,
    servers: int,
    deleting: bool,
    request_team: str,
    new: PoolSpec,
) -> tuple[str, str] | None:
    """Why a pool's workflow refuses a spec, as (field, message), or None when it accepts it."""
    if new.name != current.name:
        return ("name", f"spec for pool {new.name!r} sent to pool {current.name!r}")
    if request_team != team:
        return ("team", f"pool {current.name!r} belongs to team {team!r}, not {request_team!r}")
    if deleting:
        return ("name", f"pool {current.name} is being deleted; apply it again once the delete finished")
    if new.provider != current.provider and servers:
        return ("provider", provider_change_refusal(current.provider, new.provider, servers))
    return None
