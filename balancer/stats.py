"""The built-in balancer's live per-server counters (requests, responses by class, errors, latency
histogram, in-flight requests): `ProxyStats`, updated on every exchange by `http1.py`, read by the admin
API and `BalancerProxy.snapshot`. Compiled with `http1.py` by `make native` (see `native.py`)."""

from __future__ import annotations

from bisect import bisect_left as _bisect_left

from poolctl.domain.balancing import LATENCY_BUCKETS_S, Member, ServerStats


class _Counters:
    __slots__ = ("requests", "by_class", "errors", "latency_sum", "buckets")

    def __init__(self) -> None:
        self.requests = 0
        self.by_class = [0, 0, 0, 0, 0, 0]  # index = status // 100
        self.errors = 0
        self.latency_sum = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)  # non-cumulative; last = +Inf


class ProxyStats:
    """Live per-server counters. `active` (in-flight requests by server id) is what least_connections reads."""

    def __init__(self) -> None:
        self.counters: dict[str, _Counters] = {}
        self.active: dict[str, int] = {}
        self.requests = 0
        self.no_member = 0

    def begin(self, server_id: str) -> None:
        self.requests += 1
        c = self.counters.get(server_id)
        if c is None:
            c = self.counters[server_id] = _Counters()
        c.requests += 1
        active = self.active
        active[server_id] = active.get(server_id, 0) + 1

    def end(self, server_id: str, status: int | None, latency_s: float) -> None:
        self.active[server_id] -= 1
        c = self.counters[server_id]
        if status is None:
            c.errors += 1
        else:
            c.by_class[status // 100 if status < 600 else 5] += 1
        c.latency_sum += latency_s
        c.buckets[_bisect_left(LATENCY_BUCKETS_S, latency_s)] += 1  # first bound >= latency, else +Inf

    def server(self, server_id: str, member: Member | None) -> ServerStats:
        c = self.counters.get(server_id) or _Counters()
        cumulative, running = [], 0
        for n in c.buckets:
            running += n
            cumulative.append(running)
        return ServerStats(
            server_id=server_id,
            address=member.address if member else "",
            state=member.state.value if member else "removed",
            weight=member.weight if member else 0,
            requests=c.requests,
            responses_2xx=c.by_class[2] + c.by_class[1],
            responses_3xx=c.by_class[3],
            responses_4xx=c.by_class[4],
            responses_5xx=c.by_class[5],
            upstream_errors=c.errors,
            active_connections=self.active.get(server_id, 0),
            latency_sum_s=c.latency_sum,
            latency_buckets=cumulative,
        )
