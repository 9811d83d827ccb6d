"""The built-in proxy's Python cost per exchange, without sockets: CPU µs per request/response pair.

    .venv/bin/python bench/proxy_micro.py [--exchanges 50000] [--repeat 5] [--profile] [--request wrk|browser]
    .venv/bin/python bench/proxy_micro.py --baseline /tmp/base --rounds 3   # before/after, alternating

Feeds one request to a `ClientConn` and the member's response to the `UpstreamConn` it picked, over and
over, through the real protocol objects of `balancer/http1.py` and a real `BalancerProxy` (sticky sessions
on, three members, statistics on, every request without the cookie, as in `bench/proxy.py`). The transports
are stand-ins that only collect what is written (a bench driver, not a test double: no socket, no event
loop), so the figure is the proxy's own Python and llhttp time per exchange, measured as process CPU time
(`time.process_time`), hence insensitive to other processes on the machine. It leaves out what the event
loop and the kernel cost per exchange (in `bench/proxy.py`, with uvloop, about 10 µs of the total).
Prints the best of `--repeat` runs (and the median); `--profile` prints the cProfile of one run.
`--baseline DIR` runs the same in a subprocess on the revision in DIR (a `poolctl` folder) for before/after.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REQUESTS = {
    # what wrk sends (bench/proxy.py)
    "wrk": b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
    # a browser-like request: more headers, a foreign cookie
    "browser": (
        b"GET /static/app.js?v=3 HTTP/1.1\r\nHost: shop.example.com\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
        b"Accept: */*\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n"
        b"Referer: https://shop.example.com/\r\nCookie: theme=dark; session=abc123\r\n"
        b"Connection: keep-alive\r\nSec-Fetch-Dest: script\r\n\r\n"
    ),
}
# what the C backend of bench/proxy.py (HAProxy `http-request return`) answers
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\ncontent-type: text/plain\r\n\r\nbackend ok"


class CollectingTransport:
    """The part of `asyncio.Transport` the protocol objects use; writes are counted, not sent."""

    def __init__(self) -> None:
        self.written = 0
        self.last = b""

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.last = data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None: ...
    def is_closing(self) -> bool:
        return False


def build(request: bytes) -> tuple[Any, Any, dict[str, Any]]:
    """A proxy with three members, one client connection and one idle member connection per member."""
    from poolctl.balancer.http1 import ClientConn, UpstreamConn
    from poolctl.balancer.proxy import BalancerProxy, ProxyConfig
    from poolctl.domain.balancing import Member

    members = [Member(server_id=f"b{i}", address=f"127.0.0.1:{9000 + i}") for i in range(3)]
    proxy = BalancerProxy(ProxyConfig(name="micro", admin_port=None, sticky=True, members=members))
    pool = proxy._pool
    ups = {}
    for m in members:
        up = UpstreamConn(pool, m.address)
        up.connection_made(CollectingTransport())  # type: ignore[arg-type]
        pool.put(up)
        ups[m.address] = up
    client = ClientConn(proxy)
    client.connection_made(CollectingTransport())  # type: ignore[arg-type]
    return proxy, client, ups


def run(n: int, request: bytes) -> float:
    """CPU seconds for `n` exchanges on one keep-alive client connection."""
    proxy, client, ups = build(request)
    by_addr = list(ups.items())
    feed = client.data_received
    resp = RESPONSE
    # check one exchange end to end first
    feed(request)
    up = client.up
    assert up is not None, "the request did not reach a member"
    sent_up = up.transport.last
    up.data_received(resp)
    out = client.transport.last
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"backend ok"), out
    assert b"Set-Cookie: POOLCTL_SRV=" in out and b"X-Forwarded-For: 127.0.0.1" in sent_up
    del by_addr
    t0 = time.process_time()
    for _ in range(n):
        feed(request)
        client.up.data_received(resp)
    elapsed = time.process_time() - t0
    assert proxy.stats.requests == n + 1 and not client.busy
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exchanges", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--request", choices=sorted(REQUESTS), default="wrk")
    ap.add_argument("--profile", action="store_true", help="print the cProfile of one run")
    ap.add_argument("--baseline", help="folder holding another revision as poolctl/: measure it too")
    ap.add_argument("--rounds", type=int, default=1, help="with --baseline: alternate this many times")
    ap.add_argument("--label", default="this tree", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline:  # each revision in its own process, alternating, so background load hits both alike
        argv = [sys.executable, __file__, "--exchanges", str(args.exchanges), "--repeat", str(args.repeat)]
        argv += ["--request", args.request]
        env = {**os.environ, "PYTHONPATH": str(Path(args.baseline).resolve())}
        for _ in range(args.rounds):
            subprocess.run(
                [*argv, "--label", f"baseline {args.baseline}"], env=env, cwd=args.baseline, check=True
            )
            subprocess.run([*argv, "--label", args.label], check=True)
        return 0
    request = REQUESTS[args.request]
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(args.exchanges, request)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    per = [run(args.exchanges, request) / args.exchanges * 1e6 for _ in range(args.repeat)]
    print(
        f"{args.label}: {args.request} request, {args.exchanges} exchanges x {args.repeat}: "
        f"best {min(per):.2f} µs CPU/exchange, median {statistics.median(per):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
