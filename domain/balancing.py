"""Balancing algorithms and the balancer vocabulary (members, stats, sync results).

Pure and deterministic (no I/O, no clock, no random; hashes come from hashlib), so it is safe to
import in workflows, and the built-in proxy runs exactly this code. Only members that are
`in_rotation` with a weight above zero are candidates; when there is none, `pick` raises
`NoHealthyMember`.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from poolctl.domain.errors import PoolctlError

VNODES_PER_MEMBER = 160
"""Points per member on the consistent-hash ring: share std-dev is about 1/sqrt(160) ~ 8% of 1/N."""


class NoHealthyMember(PoolctlError):
    """No member is in rotation: the request cannot be balanced (the proxy answers 502)."""


class MemberState(StrEnum):
    IN_ROTATION = "in_rotation"  # healthy, receives new requests (HAProxy: ready)
    DRAINING = "draining"  # finishes in-flight requests, receives none (HAProxy: drain)
    OUT = "out"  # unhealthy or in maintenance, receives nothing (HAProxy: maint)


class Member(BaseModel):
    """One server behind a balancer. `active_connections` is an observation, never part of the desired state."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    server_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@/-]+$")
    address: str = Field(description="host:port of the server's HTTP listener")
    weight: int = Field(default=1, ge=0, le=256, description="0 = in the list but receives no new requests")
    state: MemberState = MemberState.IN_ROTATION
    active_connections: int = Field(default=0, ge=0)

    @field_validator("address")
    @classmethod
    def _check_address(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"address {v!r} is not host:port")
        return v

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    @property
    def is_candidate(self) -> bool:
        return self.state is MemberState.IN_ROTATION and self.weight > 0

    def desired_key(self) -> tuple[str, int, MemberState]:
        """What a sync compares: address, weight and state (not the live connection count)."""
        return (self.address, self.weight, self.state)


class SyncResult(BaseModel):
    """What a membership sync changed (server ids). Empty lists everywhere = nothing to do."""

    model_config = ConfigDict(extra="ignore")

    added: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    updated: list[str] = Field(default_factory=list)
    unchanged: list[str] = Field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.updated)


def diff_members(current: Iterable[Member], desired: Iterable[Member]) -> SyncResult:
    """The difference a driver must apply to turn `current` into `desired` (by server_id)."""
    cur = {m.server_id: m for m in current}
    want = {m.server_id: m for m in desired}
    result = SyncResult(removed=sorted(set(cur) - set(want)))
    for sid in sorted(want):
        if sid not in cur:
            result.added.append(sid)
        elif cur[sid].desired_key() != want[sid].desired_key():
            result.updated.append(sid)
        else:
            result.unchanged.append(sid)
    return result


LATENCY_BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerStats(BaseModel):
    """Per-server traffic counters since the balancer started (monotonic, except active_connections)."""

    model_config = ConfigDict(extra="ignore")

    server_id: str
    address: str = ""
    state: str = ""
    weight: int = 0
    requests: int = 0
    responses_2xx: int = 0
    responses_3xx: int = 0
    responses_4xx: int = 0
    responses_5xx: int = 0
    upstream_errors: int = Field(default=0, description="requests that got no response from the server")
    active_connections: int = 0
    latency_sum_s: float = 0.0
    latency_buckets: list[int] = Field(
        default_factory=list, description="cumulative counts per LATENCY_BUCKETS_S bound, then +Inf"
    )
    latency_mean_s: float | None = Field(
        default=None, description="a mean reported by a balancer without histograms (HAProxy: rtime)"
    )

    @property
    def success_rate(self) -> float | None:
        done = (
            self.responses_2xx
            + self.responses_3xx
            + self.responses_4xx
            + self.responses_5xx
            + self.upstream_errors
        )
        return None if done == 0 else (done - self.responses_5xx - self.upstream_errors) / done

    @property
    def mean_latency_s(self) -> float | None:
        done = self.latency_buckets[-1] if self.latency_buckets else 0
        if done == 0:
            return self.latency_mean_s
        return self.latency_sum_s / done

    def latency_quantile_s(self, q: float) -> float | None:
        """An upper bound of the q-quantile from the histogram (the first bucket bound reaching it)."""
        done = self.latency_buckets[-1] if self.latency_buckets else 0
        if done == 0:
            return None
        need = q * done
        for bound, n in zip(LATENCY_BUCKETS_S, self.latency_buckets, strict=False):
            if n >= need:
                return bound
        return float("inf")


class BalancerStats(BaseModel):
    """A balancer's statistics: totals plus one entry per server (current and past members)."""

    model_config = ConfigDict(extra="ignore")

    balancer: str = ""
    driver: str = "builtin"
    algorithm: str = ""
    requests: int = 0
    no_member_responses: int = Field(
        default=0, description="requests answered 502 because nobody was in rotation"
    )
    servers: list[ServerStats] = Field(default_factory=list)

    @property
    def success_rate(self) -> float | None:
        ok = sum(s.responses_2xx + s.responses_3xx + s.responses_4xx for s in self.servers)
        bad = sum(s.responses_5xx + s.upstream_errors for s in self.servers) + self.no_member_responses
        return None if ok + bad == 0 else ok / (ok + bad)


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process (Python's hash() is randomized)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def sticky_token(server_id: str, key: bytes = b"") -> str:
    """The sticky cookie value for a server: HMAC-SHA256 of its id under the balancer's secret `key`
    (128 bits, hex), so it is opaque, stable while the key is, and a client cannot compute the cookie of
    a server it was never sent to. An empty key (tests, tools) gives an unkeyed but still opaque value."""
    return hmac.new(key or b"poolctl-sticky", server_id.encode(), hashlib.sha256).hexdigest()[:32]


# --- selectors -----------------------------------------------------------------------------------------


class Selector:
    """Per-balancer selection state. `set_members` replaces the membership; `pick` chooses one candidate.

    Candidates are ordered by server_id so the order never depends on how a caller listed them.
    """

    def __init__(self, members: Iterable[Member] = ()) -> None:
        self.members: dict[str, Member] = {}
        self.candidates: list[Member] = []
        self.set_members(members)

    def set_members(self, members: Iterable[Member]) -> None:
        self.members = {m.server_id: m for m in members}
        self.candidates = sorted(
            (m for m in self.members.values() if m.is_candidate), key=lambda m: m.server_id
        )
        self._rebuild()

    def _rebuild(self) -> None:
        """Hook: recompute algorithm state after a membership change."""

    def pick(self, client_key: str = "", connections: Mapping[str, int] | None = None) -> Member:
        """Choose a candidate. `client_key` (client IP) matters to ip_hash; `connections` (live in-flight
        counts by server_id, default each member's `active_connections`) to least_connections."""
        if not self.candidates:
            raise NoHealthyMember("no member is in rotation")
        return self._pick(client_key, connections)

    def _pick(self, client_key: str, connections: Mapping[str, int] | None) -> Member:
        raise NotImplementedError


class RoundRobinSelector(Selector):
    """Each candidate in turn (weights other than 0 are ignored). A membership change keeps the turn:
    the next pick is the first candidate after the last one picked."""

    _next: int = 0
    _last: str | None = None

    def _rebuild(self) -> None:
        ids = [m.server_id for m in self.candidates]
        self._next = bisect.bisect_right(ids, self._last) if self._last is not None else 0

    def _pick(self, client_key: str, connections: Mapping[str, int] | None) -> Member:
        n = len(self.candidates)
        m = self.candidates[self._next % n]
        self._next = (self._next + 1) % n
        self._last = m.server_id
        return m


class LeastConnectionsSelector(RoundRobinSelector):
    """The candidate with the fewest active connections; ties go in round-robin order."""

    def _pick(self, client_key: str, connections: Mapping[str, int] | None) -> Member:
        cands = self.candidates
        n = len(cands)
        start = self._next % n
        best_i = start
        best_c: int | None = None
        for k in range(n):
            i = (start + k) % n
            m = cands[i]
            c = connections.get(m.server_id, 0) if connections is not None else m.active_connections
            if best_c is None or c < best_c:
                best_i, best_c = i, c
                if c == 0:
                    break
        self._next = (best_i + 1) % n
        self._last = cands[best_i].server_id
        return cands[best_i]


class SmoothWeightedSelector(Selector):
    """nginx's smooth weighted round robin: over any `sum(weights)` consecutive picks each candidate is
    chosen exactly `weight` times, interleaved (weights 5,1,1 give a a b a c a a, not a a a a a b c).
    A change of the candidate set or of a weight restarts the cycle."""

    _current: dict[str, int]
    _total: int = 0
    _signature: tuple[tuple[str, int], ...] = ()

    def _rebuild(self) -> None:
        signature = tuple((m.server_id, m.weight) for m in self.candidates)
        if signature != self._signature or not hasattr(self, "_current"):
            self._signature = signature
            self._current = {sid: 0 for sid, _ in signature}
            self._total = sum(w for _, w in signature)

    def _pick(self, client_key: str, connections: Mapping[str, int] | None) -> Member:
        current = self._current
        best: Member | None = None
        best_w = 0
        for m in self.candidates:
            w = current[m.server_id] + m.weight
            current[m.server_id] = w
            if best is None or w > best_w:
                best, best_w = m, w
        assert best is not None
        current[best.server_id] = best_w - self._total
        return best


class ConsistentHashSelector(Selector):
    """IP hash on a consistent-hash ring: each candidate owns VNODES_PER_MEMBER points; a client key maps
    to the first point clockwise. When a member leaves only the keys it owned move (about 1/N of them);
    the others keep their server. Weights other than 0 are ignored."""

    _points: list[int]
    _owners: list[Member]

    def _rebuild(self) -> None:
        ring = sorted(
            (stable_hash(f"{m.server_id}#{i}"), m.server_id, m)
            for m in self.candidates
            for i in range(VNODES_PER_MEMBER)
        )
        self._points = [p for p, _, _ in ring]
        self._owners = [m for _, _, m in ring]

    def _pick(self, client_key: str, connections: Mapping[str, int] | None) -> Member:
        i = bisect.bisect_left(self._points, stable_hash(client_key))
        return self._owners[i % len(self._owners)]


SELECTORS: dict[str, type[Selector]] = {
    "round_robin": RoundRobinSelector,
    "least_connections": LeastConnectionsSelector,
    "ip_hash": ConsistentHashSelector,
    "weighted": SmoothWeightedSelector,
}


def make_selector(algorithm: str, members: Iterable[Member] = ()) -> Selector:
    try:
        cls = SELECTORS[algorithm]
    except KeyError:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {', '.join(SELECTORS)}") from None
    return cls(members)


# --- sticky sessions + the per-balancer object the proxy uses --------------------------------------------


@dataclass(frozen=True, slots=True)
class Pick:
    """The chosen member, and the sticky cookie value to set on the response (None: leave the cookie)."""

    member: Member
    set_cookie: str | None = None


class Balancing:
    """All selection state of one balancer: the algorithm's selector plus sticky-session resolution.

    With `sticky`, a request whose cookie names a member still in rotation goes to that member; any other
    request is picked by the algorithm and told to set the cookie."""

    def __init__(
        self, algorithm: str, members: Sequence[Member] = (), *, sticky: bool = False, sticky_key: bytes = b""
    ) -> None:
        self.algorithm = algorithm
        self.sticky = sticky
        self.sticky_key = sticky_key
        self.selector = make_selector(algorithm, members)
        self._by_token: dict[str, Member] = {}
        self._token_of: dict[str, str] = {}
        self._index_tokens()

    @property
    def members(self) -> dict[str, Member]:
        return self.selector.members

    def set_members(self, members: Iterable[Member]) -> None:
        self.selector.set_members(members)
        self._index_tokens()

    def _index_tokens(self) -> None:
        self._token_of = {
            m.server_id: sticky_token(m.server_id, self.sticky_key) for m in self.selector.candidates
        }
        self._by_token = {t: self.selector.members[sid] for sid, t in self._token_of.items()}

    def resolve_sticky(self, cookie: str | None) -> Member | None:
        """The member a sticky cookie names if it is still a candidate, else None (re-pick)."""
        if not cookie:
            return None
        return self._by_token.get(cookie)

    def pick(
        self, client_key: str = "", cookie: str | None = None, connections: Mapping[str, int] | None = None
    ) -> Pick:
        """Choose the member for one request. Raises NoHealthyMember when nobody is in rotation."""
        if self.sticky:
            m = self.resolve_sticky(cookie)
            if m is not None:
                return Pick(m)
            m = self.selector.pick(client_key, connections)
            return Pick(m, self._token_of.get(m.server_id) or sticky_token(m.server_id, self.sticky_key))
        return Pick(self.selector.pick(client_key, connections))


# --- from pool servers to balancer members -------------------------------------------------------------


def members_for(
    servers: Iterable[object],
    *,
    weights: Mapping[str, int] | None = None,
    default_weight: int = 1,
    require_healthy: bool = False,
) -> list[Member]:
    """Balancer members for a pool's servers (anything with server_id or id, host, port, state, health).

    `state == "draining"` -> DRAINING; `health == "unhealthy"` -> OUT; `health == "initial"` (not checked
    yet) -> OUT when `require_healthy` (a pool with a health check adds servers once healthy), else
    IN_ROTATION; terminated servers are left out. Pure: workflows may call it on ServerRecords."""
    out = []
    for s in servers:
        sid = str(getattr(s, "server_id", None) or getattr(s, "id"))  # noqa: B009
        state = str(getattr(s, "state", "running") or "running")
        health = str(getattr(s, "health", "initial") or "initial")
        if state == "terminated":
            continue
        if state == "draining":
            ms = MemberState.DRAINING
        elif health == "unhealthy" or (require_healthy and health != "healthy"):
            ms = MemberState.OUT
        else:
            ms = MemberState.IN_ROTATION
        host = str(getattr(s, "host"))  # noqa: B009
        addr = f"[{host}]" if ":" in host else host
        weight = (weights or {}).get(sid, default_weight)
        out.append(Member(server_id=sid, address=f"{addr}:{getattr(s, 'port')}", weight=weight, state=ms))  # noqa: B009
    return sorted(out, key=lambda m: m.server_id)
