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
from poolctl.domain.slow_start import WEIGHT_SCALE, slow_start_weight

VNODES_PER_MEMBER = 160
"""Points per member on the consistent-hash ring: share std-dev is about 1/sqrt(160) ~ 8% of 1/N."""


NO_MEMBER_STATUS = 503
"""What both drivers answer when no member is in rotation (HAProxy's and nginx's answer: nothing is wrong
with a gateway, no server is available), with `Retry-After: NO_MEMBER_RETRY_AFTER_S` and `no_member_body`."""
NO_MEMBER_RETRY_AFTER_S = 1


def no_member_body(balancer: str) -> str:
    """The short text/plain body of the no-server answer, the same on the built-in proxy and HAProxy."""
    return f"503 Service Unavailable: load balancer {balancer!r} has no server in rotation\n"


class NoHealthyMember(PoolctlError):
    """No member is in rotation: the request cannot be balanced (both drivers answer 503, see NO_MEMBER_STATUS)."""


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
        default=0, description="requests answered 503 because nobody was in rotation"
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

    Candidates are ordered by server_id so the order never depends on how a caller listed them. Each
    candidate has an effective weight in WEIGHT_SCALE units (`eweights`): `weight * WEIGHT_SCALE` unless
    the caller gives others (a slow start ramp, see `Balancing`); an algorithm that ignores weights
    (round robin, IP hash) sees `WEIGHT_SCALE` for every candidate at full speed.
    """

    uses_weights = True
    """False: the member's weight only says in (above 0) or out; effective weights come from ramps alone."""

    def __init__(self, members: Iterable[Member] = (), eweights: Mapping[str, int] | None = None) -> None:
        self.members: dict[str, Member] = {}
        self.candidates: list[Member] = []
        self.eweights: dict[str, int] = {}
        self.set_members(members, eweights)

    def full_weight(self, m: Member) -> int:
        """A candidate's effective weight at full speed (WEIGHT_SCALE units)."""
        return (m.weight if self.uses_weights else 1) * WEIGHT_SCALE

    def set_members(self, members: Iterable[Member], eweights: Mapping[str, int] | None = None) -> None:
        """Replace the membership. `eweights` (by server_id, WEIGHT_SCALE units, at least 1) overrides the
        full weight of the candidates it names."""
        self.members = {m.server_id: m for m in members}
        self.candidates = sorted(
            (m for m in self.members.values() if m.is_candidate), key=lambda m: m.server_id
        )
        given = eweights or {}
        self.eweights = {
            m.server_id: max(1, min(given.get(m.server_id, self.full_weight(m)), self.full_weight(m)))
            for m in self.candidates
        }
        self._rebuild()

    @property
    def ramping(self) -> bool:
        """True while some candidate's effective weight is below its full weight."""
        return any(self.eweights[m.server_id] < self.full_weight(m) for m in self.candidates)

    def _rebuild(self) -> None:
        """Hook: recompute algorithm state after a membership or weight change."""

    def pick(self, client_key: str = "", connections: Mapping[str, int] | None = None) -> Member:
        """Choose a candidate. `client_key` (client IP) matters to ip_hash; `connections` (live in-flight
        counts by server_id, default each member's `active_connections`) to least_connections."""
        if not self.candidates:
            raise NoHealthyMember("no member is in rotation")
        return self._pick(client_key, connections)

    def _pick(self, client_key: str, connections: Mapping[str, int] | None) -> Member:
        raise NotImplementedError


class _SmoothWeighted:
    """nginx's smooth weighted round robin over (candidate, weight) pairs: over any `sum(weights)`
    consecutive picks each candidate is chosen exactly `weight` times, interleaved."""

    __slots__ = ("current", "total", "signature")

    def __init__(self) -> None:
        self.current: dict[str, int] = {}
        self.total = 0
        self.signature: tuple[tuple[str, int], ...] = ()

    def reset(self, signature: tuple[tuple[str, int], ...]) -> None:
        """Restart the cycle when the candidates or their weights changed (else keep it)."""
        if signature != self.signature:
            self.signature = signature
            self.current = {sid: 0 for sid, _ in signature}
            self.total = sum(w for _, w in signature)

    def pick(self, candidates: Sequence[Member], eweights: Mapping[str, int]) -> Member:
        current = self.current
        best: Member | None = None
        best_w = 0
        for m in candidates:
            w = current[m.server_id] + eweights[m.server_id]
            current[m.server_id] = w
            if best is None or w > best_w:
                best, best_w = m, w
        assert best is not None
        current[best.server_id] = best_w - self.total
        return best


class RoundRobinSelector(Selector):
    """Each candidate in turn (weights other than 0 are ignored). A membership change keeps the turn:
    the next pick is the first candidate after the last one picked. While a candidate ramps up (slow
    start), turns follow the effective weights (smooth weighted round robin), as HAProxy's roundrobin does."""

    uses_weights = False
    _next: int = 0
    _last: str | None = None
    _smooth: _SmoothWeighted | None = None

    def _rebuild(self) -> None:
        ids = [m.server_id for m in self.candidates]
        self._next = bisect.bisect_right(ids, self._last) if self._last is not None else 0
        if self.ramping:
            if self._smooth is None:
                self._smooth = _SmoothWeighted()
            self._smooth.reset(tuple((m.server_id, self.eweights[m.server_id]) for m in self.candidates))
        else:
            self._smooth = None

    def _pick(self, client_key: str, connections: Mapping[str, int] | None) -> Member:
        if self._smooth is not None:
            m = self._smooth.pick(self.candidates, self.eweights)
            self._last = m.server_id
            return m
        n = len(self.candidates)
        m = self.candidates[self._next % n]
        self._next = (self._next + 1) % n
        self._last = m.server_id
        return m


class LeastConnectionsSelector(Selector):
    """Weighted least connections (HAProxy `leastconn`, nginx `least_conn`): the candidate with the lowest
    active connections / effective weight; ties go in round-robin order (the first tied candidate after
    the last one picked). With weights 3:1 and 40 long requests in flight: 30 and 10."""

    _next: int = 0
    _last: str | None = None

    def _rebuild(self) -> None:
        ids = [m.server_id for m in self.candidates]
        self._next = bisect.bisect_right(ids, self._last) if self._last is not None else 0

    def _pick(self, client_key: str, connections: Mapping[str, int] | None) -> Member:
        cands = self.candidates
        eweights = self.eweights
        n = len(cands)
        start = self._next % n
        best_i = start
        best_c = -1
        best_w = 1
        for k in range(n):
            i = (start + k) % n
            m = cands[i]
            c = connections.get(m.server_id, 0) if connections is not None else m.active_connections
            w = eweights[m.server_id]
            if best_c < 0 or c * best_w < best_c * w:  # c / w < best_c / best_w, in integers
                best_i, best_c, best_w = i, c, w
                if c == 0:
                    break
        self._next = (best_i + 1) % n
        self._last = cands[best_i].server_id
        return cands[best_i]


class SmoothWeightedSelector(Selector):
    """nginx's smooth weighted round robin: over any `sum(weights)` consecutive picks each candidate is
    chosen exactly `weight` times, interleaved (weights 5,1,1 give a a b a c a a, not a a a a a b c).
    A change of the candidate set or of a weight restarts the cycle. (Effective weights are the weights
    times WEIGHT_SCALE; the sequence does not change when every weight is scaled alike.)"""

    _smooth: _SmoothWeighted

    def _rebuild(self) -> None:
        if not hasattr(self, "_smooth"):
            self._smooth = _SmoothWeighted()
        self._smooth.reset(tuple((m.server_id, self.eweights[m.server_id]) for m in self.candidates))

    def _pick(self, client_key: str, connections: Mapping[str, int] | None) -> Member:
        return self._smooth.pick(self.candidates, self.eweights)


class ConsistentHashSelector(Selector):
    """IP hash on a consistent-hash ring: each candidate owns VNODES_PER_MEMBER points; a client key maps
    to the first point clockwise. When a member leaves only the keys it owned move (about 1/N of them);
    the others keep their server. Weights other than 0 are ignored; a candidate ramping up (slow start)
    owns a share of its points in proportion to its effective weight (HAProxy's consistent hash does the
    same), so it only takes keys over as it ramps."""

    uses_weights = False
    _points: list[int]
    _owners: list[Member]

    def _rebuild(self) -> None:
        ring = sorted(
            (stable_hash(f"{m.server_id}#{i}"), m.server_id, m)
            for m in self.candidates
            for i in range(max(1, VNODES_PER_MEMBER * self.eweights[m.server_id] // WEIGHT_SCALE))
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


# --- sticky sessions, slow start + the per-balancer object the proxy uses --------------------------------


@dataclass(frozen=True, slots=True)
class Pick:
    """The chosen member, and the sticky cookie value to set on the response (None: leave the cookie)."""

    member: Member
    set_cookie: str | None = None


class Balancing:
    """All selection state of one balancer: the algorithm's selector, sticky-session resolution and the
    slow start ramps.

    With `sticky`, a request whose cookie names a member still in rotation goes to that member; so does
    one naming a draining member when `drain_sticky` is "keep" (HAProxy's behaviour: persistence is
    honoured until the drain ends); any other request is picked by the algorithm and told to set the cookie.

    With `slow_start_s` > 0, a member that enters rotation (added in rotation, or back from `out`; not
    from `draining`, which kept serving) starts at a small effective weight that `advance(now)` ramps up
    (`domain.slow_start`). `now` is any monotonic clock in seconds, the same in every call."""

    def __init__(
        self,
        algorithm: str,
        members: Sequence[Member] = (),
        *,
        sticky: bool = False,
        sticky_key: bytes = b"",
        drain_sticky: str = "keep",
        slow_start_s: float = 0.0,
        now: float = 0.0,
    ) -> None:
        self.algorithm = algorithm
        self.sticky = sticky
        self.sticky_key = sticky_key
        self.keep_draining_sticky = drain_sticky == "keep"
        self.slow_start_s = slow_start_s
        self.selector = make_selector(algorithm)
        self._entered: dict[str, float] = {}  # server_id -> when it entered rotation (ramping ones only)
        self._by_token: dict[str, Member] = {}
        self._token_of: dict[str, str] = {}
        self._picks: dict[str, Pick] = {}
        self._kept: dict[str, Pick] = {}
        self.set_members(members, now)

    @property
    def members(self) -> dict[str, Member]:
        return self.selector.members

    @property
    def ramping(self) -> bool:
        """True while a slow start ramp is under way (the caller should `advance` now and then)."""
        return bool(self._entered)

    def set_members(self, members: Iterable[Member], now: float = 0.0) -> None:
        members = list(members)
        if self.slow_start_s > 0:
            before = self.selector.members
            for m in members:
                prev = before.get(m.server_id)
                if not m.is_candidate:
                    self._entered.pop(m.server_id, None)
                elif prev is None or prev.state is MemberState.OUT or prev.weight == 0:
                    self._entered[m.server_id] = now
            for sid in set(self._entered) - {m.server_id for m in members}:
                del self._entered[sid]
        self.selector.set_members(members, self._eweights(members, now))
        self._index_tokens()

    def advance(self, now: float) -> bool:
        """Move the slow start ramps to `now`. Returns True when an effective weight changed."""
        if not self._entered:
            return False
        members = list(self.selector.members.values())
        was_ramping = set(self._entered)
        eweights = self._eweights(members, now)
        ended = was_ramping - set(self._entered)
        if not ended and all(self.selector.eweights.get(sid) == w for sid, w in eweights.items()):
            return False
        self.selector.set_members(members, eweights)
        return True

    def _eweights(self, members: Sequence[Member], now: float) -> dict[str, int]:
        """Effective weights of the ramping candidates; ramps that reached full speed end here."""
        out: dict[str, int] = {}
        by_id = {m.server_id: m for m in members}
        for sid, since in list(self._entered.items()):
            elapsed = now - since
            if elapsed >= self.slow_start_s:
                del self._entered[sid]
                continue
            m = by_id[sid]
            base = m.weight if self.selector.uses_weights else 1
            out[sid] = slow_start_weight(base, elapsed, self.slow_start_s)
        return out

    def _index_tokens(self) -> None:
        keep = self.keep_draining_sticky
        members = self.selector.members
        self._token_of = {
            m.server_id: sticky_token(m.server_id, self.sticky_key)
            for m in members.values()
            if m.is_candidate or (keep and m.state is MemberState.DRAINING)
        }
        self._by_token = {t: members[sid] for sid, t in self._token_of.items()}
        # the answers of `pick`, made once per membership change (a Pick is immutable): by server id, the
        # pick of a client re-balanced (told to set the cookie when sticky); by token, a cookie honoured
        self._picks = {
            sid: Pick(m, self._token_of.get(sid) or sticky_token(sid, self.sticky_key))
            if self.sticky
            else Pick(m)
            for sid, m in members.items()
        }
        self._kept = {t: Pick(m) for t, m in self._by_token.items()}

    def resolve_sticky(self, cookie: str | None) -> Member | None:
        """The member a sticky cookie names if it may still serve the client, else None (re-pick)."""
        if not cookie:
            return None
        return self._by_token.get(cookie)

    def pick(
        self, client_key: str = "", cookie: str | None = None, connections: Mapping[str, int] | None = None
    ) -> Pick:
        """Choose the member for one request. Raises NoHealthyMember when nobody is in rotation."""
        if cookie and self.sticky:
            kept = self._kept.get(cookie)
            if kept is not None:
                return kept
        selector = self.selector
        if not selector.candidates:
            raise NoHealthyMember("no member is in rotation")
        m = selector._pick(client_key, connections)  # what selector.pick does, one call less per request
        p = self._picks.get(m.server_id)
        if p is not None and p.member is m:
            return p
        if self.sticky:
            return Pick(m, self._token_of.get(m.server_id) or sticky_token(m.server_id, self.sticky_key))
        return Pick(m)


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
