"""Static pools (`provider: static`): servers poolctl does not start, registered by address and weight in
the spec (`servers:`) and by `poolctl server add/remove`. The spec entry, how an apply merges with servers
added by hand, what the pool must register or deregister, and which servers healing took out of rotation.
Pure: the PoolWorkflow calls these (workflows/static_members.py does the I/O)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from poolctl.domain.addresses import canonical_server_address, format_server_address
from poolctl.domain.bounds import Weight
from poolctl.domain.health import HealthState
from poolctl.domain.model import Message, StrictModel

STATIC_PROVIDER = "static"
RECOMMENDATION_ONLY = (
    "recommendation only: poolctl does not provision the servers of a static pool, so its policies "
    "run as a dry run (decisions are recorded, the pool is not resized)"
)
"""What `policy show`, `status` and the pool's status query say about a policy on a static pool."""


class StaticServer(StrictModel):
    """One existing server of a static pool: `address` is `host:port` (IPv4, `[IPv6]` or a DNS name;
    port 1-65535), kept in canonical form; `weight` is its balancer weight (0-256, 0: no new traffic)."""

    address: str = Field(max_length=300, description="host:port, e.g. 10.0.0.5:8080 or [2001:db8::5]:8080")
    weight: Weight = 1

    @field_validator("address", mode="before")
    @classmethod
    def _canonical(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v  # the str type check reports it
        return canonical_server_address(v)


class StaticMembership(Message):
    """A static pool's durable membership (part of PoolState): what should be registered, and which
    members healing has recorded as out of rotation."""

    registered: dict[str, int] = Field(default_factory=dict, description="canonical address -> weight")
    keys: dict[str, str] = Field(
        default_factory=dict, description="address -> idempotency key it was registered with"
    )
    registrations: int = Field(default=0, description="registrations so far (makes each key unique)")
    out_of_rotation: list[str] = Field(
        default_factory=list, description="server ids recorded out of rotation"
    )


class ServerChangeRequest(Message):
    """The pool's `change_server` update: `poolctl server add` (weight optional) or `server remove`."""

    address: str
    weight: int | None = None
    remove: bool = False


class ServerChangeResult(Message):
    """What the update changed: `action` is added, reweighted, removed or unchanged."""

    address: str
    action: str
    weight: int | None = None
    previous_weight: int | None = None
    registered: int = Field(description="servers registered after the change")


def listed(servers: list[StaticServer]) -> dict[str, int]:
    return {s.address: s.weight for s in servers}


def merge_static_servers(
    previous: list[StaticServer] | None, new: list[StaticServer], registered: dict[str, int]
) -> dict[str, int]:
    """The membership after applying a spec whose `servers` is `new`, like `kubectl apply`: what changed in
    the file since `previous` (the last applied list; None for the first apply, when the file is the whole
    truth) is applied to `registered`; servers added or removed by hand, and not touched in the file, stay."""
    if previous is None:
        return listed(new)
    before, after = listed(previous), listed(new)
    out = dict(registered)
    for address in before.keys() - after.keys():
        out.pop(address, None)
    for address, weight in after.items():
        if before.get(address) != weight:
            out[address] = weight
    return out


def server_change_refusal(
    provider: str, registered: dict[str, int], req: ServerChangeRequest, *, pool: str
) -> str | None:
    """Why `poolctl server add/remove` is refused (None: accepted). Checked by the update's validator."""
    if provider != STATIC_PROVIDER:
        return (
            f"pool {pool} uses provider {provider!r}: server add/remove is for static pools (provider: static); "
            "resize this pool with poolctl scale"
        )
    try:
        address = canonical_server_address(req.address)
    except ValueError as e:
        return str(e)
    if not req.remove:
        if req.weight is not None and not 0 <= req.weight <= 256:
            return f"weight {req.weight} is outside 0-256"
        return None
    if address not in registered:
        return f"{address} is not a server of pool {pool}"
    return None


def apply_server_change(
    registered: dict[str, int], req: ServerChangeRequest
) -> tuple[dict[str, int], ServerChangeResult]:
    """The membership after an accepted add/remove, and what changed. An add of a registered address
    without `weight` changes nothing; with a new weight it reweights."""
    address = canonical_server_address(req.address)
    out = dict(registered)
    previous = registered.get(address)
    if not req.remove:
        weight = req.weight if req.weight is not None else (previous if previous is not None else 1)
        out[address] = weight
        action = "added" if previous is None else ("unchanged" if previous == weight else "reweighted")
        result = ServerChangeResult(
            address=address, action=action, weight=weight, previous_weight=previous, registered=len(out)
        )
    else:
        out.pop(address, None)
        result = ServerChangeResult(
            address=address, action="removed", previous_weight=previous, registered=len(out)
        )
    return out, result


class Member(Message):
    """What `plan_membership` needs of a pool member (a ServerRecord fits)."""

    server_id: str
    host: str
    port: int
    weight: int | None = None


class MembershipPlan(Message):
    """Addresses to register (with weight), server ids to deregister, and weights to change by server id."""

    to_register: dict[str, int] = Field(default_factory=dict)
    to_deregister: list[str] = Field(default_factory=list)
    reweight: dict[str, int] = Field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.to_register or self.to_deregister or self.reweight)


def plan_membership(registered: dict[str, int], members: list[Member]) -> MembershipPlan:
    """What the pool must do so that its members are exactly `registered` (address -> weight)."""
    plan = MembershipPlan()
    present: dict[str, Member] = {}
    for m in members:
        address = format_server_address(m.host, m.port)
        if address in registered and address not in present:
            present[address] = m
            if m.weight != registered[address]:
                plan.reweight[m.server_id] = registered[address]
        else:
            plan.to_deregister.append(m.server_id)  # no longer wanted, or a duplicate
    plan.to_register = {a: w for a, w in registered.items() if a not in present}
    return plan


class RotationChange(Message):
    server_id: str
    out: bool = Field(description="True: left rotation (unhealthy); False: back in rotation (healthy)")


def rotation_changes(
    members: list[tuple[str, HealthState]], out_of_rotation: list[str]
) -> tuple[list[RotationChange], list[str]]:
    """Healing on a static pool takes unhealthy servers out of rotation instead of replacing them: the
    changes to record (newly unhealthy, healthy again) and the new out-of-rotation list. Members that
    left the pool are forgotten silently."""
    ids = {sid for sid, _ in members}
    was = [sid for sid in out_of_rotation if sid in ids]
    changes: list[RotationChange] = []
    now: list[str] = []
    for sid, health in members:
        if health is HealthState.UNHEALTHY:
            now.append(sid)
            if sid not in was:
                changes.append(RotationChange(server_id=sid, out=True))
        elif sid in was and health is HealthState.HEALTHY:
            changes.append(RotationChange(server_id=sid, out=False))
        elif sid in was:
            now.append(sid)  # not healthy yet (e.g. its check restarted): still out
    return changes, now
