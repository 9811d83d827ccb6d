"""How many health-check targets can one worker process watch?

    .venv/bin/python bench/probes.py --targets 2000 --interval 5 --duration 30
    .venv/bin/python bench/probes.py --targets 2000 --interval 5 --duration 30 --client httpx

Runs the real probe loop (`poolctl.activities.watch.watch_target`, with the real HTTP prober)
for N targets in this one process, exactly as N `watch_target` activities would run in one
worker (heartbeats go to a counter instead of Temporal). A watch that returns on a transition is
restarted with the new status, as the HealthCheckWorkflow does.

The targets are one subprocess (started here) that listens on `--ports` ports with aiohttp and
answers `/health/{i}` for every target i; with `--flap-fraction` some targets alternate between
200 and 503 every `--flap-period` seconds, so transitions happen.

Prints: probe rate (achieved vs the schedule's N/interval), probe-time jitter = actual probe
start minus its scheduled time (p50/p99/max), probe latency, CPU use, transitions, and the
estimated Temporal history events per target per hour.

--client httpx swaps in an httpx.AsyncClient prober (same semantics) to compare: that is how
the choice of aiohttp for the hot path in activities/probes.py was measured.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# History events per transition (HealthCheckWorkflow): the watch activity completes
# (ActivityTaskScheduled/Started/Completed = 3) + a workflow task (3) + record the transition in
# the store (activity 3 + workflow task 3) + signal the PoolWorkflow (SignalExternal...Initiated +
# ExternalWorkflowExecutionSignaled = 2) + telling the balancer (~3, later) -> about 17.
EVENTS_PER_TRANSITION = 17
# A lease renewal: the activity's 3 events + one workflow task (3) to start the next watch.
EVENTS_PER_LEASE = 6
# For comparison: one activity per probe + timer, measured ~11 events per iteration (DESIGN.md).
EVENTS_PER_PROBE_NAIVE = 11


# ------------------------------------------------------------------------------ target server


async def listen_on_loopback(app, n_ports: int, backlog: int) -> list[int]:  # type: ignore[no-untyped-def]
    """Serve an aiohttp application on `n_ports` fresh 127.0.0.1 ports (chosen by the kernel); their numbers."""
    import socket

    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ports = []
    for _ in range(n_ports):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(backlog)
        s.setblocking(False)
        ports.append(s.getsockname()[1])
        await web.SockSite(runner, s, backlog=backlog).start()
    return ports


def serve(n_ports: int, flap_every: int, flap_period: float) -> None:
    """The target subprocess: one aiohttp app on n_ports ports; prints the ports as JSON."""
    from aiohttp import web

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def health(request: web.Request) -> web.Response:
        i = int(request.match_info["i"])
        if flap_every and i % flap_every == 0 and int(time.time() // flap_period) % 2 == 1:
            return web.Response(status=503, text="down")
        return web.Response(text="ok")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/health/{i}", health)
        ports = await listen_on_loopback(app, n_ports, backlog=4096)
        print(json.dumps(ports), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# ------------------------------------------------------------------------------ httpx prober


class HttpxProber:
    """The same HTTP probe semantics as poolctl's Prober.http, on one shared httpx.AsyncClient."""

    def __init__(self, max_connections: int, keepalive: bool) -> None:
        import httpx

        self.httpx = httpx
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections if keepalive else 0
            ),
            timeout=None,
            follow_redirects=False,
        )

    async def probe(self, spec, host, port):
        from poolctl.domain.health import ProbeResult

        started = time.perf_counter()
        try:
            async with asyncio.timeout(spec.timeout):
                r = await self.client.request(spec.method, f"http://{host}:{port}{spec.path}")
        except TimeoutError:
            return ProbeResult(ok=False, error="timeout", latency_ms=(time.perf_counter() - started) * 1000)
        except self.httpx.HTTPError as e:
            return ProbeResult(ok=False, error=str(e), latency_ms=(time.perf_counter() - started) * 1000)
        lat = (time.perf_counter() - started) * 1000
        if not spec.status_ok(r.status_code):
            return ProbeResult(ok=False, status_code=r.status_code, latency_ms=lat, error="status")
        return ProbeResult(ok=True, status_code=r.status_code, latency_ms=lat)

    async def close(self):
        await self.client.aclose()


# ------------------------------------------------------------------------------ the bench


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


async def run(args: argparse.Namespace, ports: list[int]) -> dict:
    from poolctl.activities.probes import Prober
    from poolctl.activities.watch import WatchParams, WatchProgress, watch_target
    from poolctl.domain.health import HealthStatus
    from poolctl.domain.health_spec import HealthCheckSpec

    if args.client == "httpx":
        prober = HttpxProber(args.max_connections, args.keepalive)
    else:
        prober = Prober(max_connections=args.max_connections, keepalive=args.keepalive)

    t0 = time.time()
    warm_until = t0 + args.interval  # the first interval spreads the start; measure after it
    end = t0 + args.duration
    lateness: list[float] = []
    latencies: list[float] = []
    counters = {
        "probes": 0,
        "measured": 0,
        "failures": 0,
        "transitions": 0,
        "first_transitions": 0,
        "heartbeats": 0,
        "leases": 0,
    }

    def make_heartbeat():
        seen: list[float | None] = [None]

        def heartbeat(p: WatchProgress) -> None:
            counters["heartbeats"] += 1
            if p.last_started_at is None or p.last_scheduled_at is None or p.last_started_at == seen[0]:
                return  # a heartbeat while waiting, or the lease-end heartbeat: no new probe
            seen[0] = p.last_started_at
            counters["probes"] += 1
            r = p.status.last_result
            if r is not None and not r.ok:
                counters["failures"] += 1
            if p.last_scheduled_at >= warm_until and p.last_started_at <= end:
                counters["measured"] += 1
                lateness.append((p.last_started_at - p.last_scheduled_at) * 1000.0)
                if r is not None and r.latency_ms is not None:
                    latencies.append(r.latency_ms)

        return heartbeat

    async def one(i: int) -> None:
        spec = HealthCheckSpec(
            type="http",
            path=f"/health/{i}",
            interval=args.interval,
            timeout=args.timeout,
            healthy_threshold=2,
            unhealthy_threshold=2,
            jitter=args.jitter,
        )
        status = HealthStatus()
        next_at = None
        heartbeat = make_heartbeat()
        while True:
            out = await watch_target(
                WatchParams(
                    check_id=f"bench/{i}",
                    host="127.0.0.1",
                    port=ports[i % len(ports)],
                    spec=spec,
                    status=status,
                    lease_s=args.lease,
                    next_probe_at=next_at,
                ),
                heartbeat=heartbeat,
                resume_from=None,
                probe=prober.probe,
            )
            if out.reason == "transition":
                assert out.transition is not None
                if out.transition.from_state == "initial":
                    counters["first_transitions"] += 1  # once per server lifetime
                else:
                    counters["transitions"] += 1
            elif out.reason == "lease_end":
                counters["leases"] += 1
            else:
                raise RuntimeError(out.config_error)
            status, next_at = out.status, out.next_probe_at

    async def report_progress() -> None:
        last = 0
        while True:
            await asyncio.sleep(5)
            n = counters["probes"]
            recent = lateness[-max(1, n - last) :]
            print(
                f"  ... t={time.time() - t0:4.0f}s probes/s={(n - last) / 5:5.0f} "
                f"late p99={pct(recent, 99):6.1f} ms",
                file=sys.stderr,
                flush=True,
            )
            last = n

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    tasks = [asyncio.create_task(one(i)) for i in range(args.targets)]
    reporter = asyncio.create_task(report_progress()) if args.progress else None
    if args.gc_tune:
        # What a worker can do after start-up: move long-lived objects out of the collected
        # generations and collect the young generation less often (fewer, not longer, pauses).
        await asyncio.sleep(0)
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
    await asyncio.sleep(max(0.0, end - time.time()))
    if reporter is not None:
        reporter.cancel()
    for t in tasks:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [
        r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
    ]
    if errors:
        raise RuntimeError(f"{len(errors)} watch loops failed, first: {errors[0]!r}")
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    await prober.close()
    wall = time.time() - t0
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    measured_window = max(1e-9, end - warm_until)
    return {
        "lateness": lateness,
        "latencies": latencies,
        "counters": counters,
        "cpu_s": cpu,
        "wall_s": wall,
        "window_s": measured_window,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", type=int, default=2000)
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument(
        "--timeout", type=float, default=None, help="probe timeout (s); default min(2, interval/2)"
    )
    ap.add_argument("--jitter", default="10%")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument(
        "--lease", type=float, default=3600.0, help="watch lease (s); used in the events estimate"
    )
    ap.add_argument("--ports", type=int, default=100, help="ports the target process listens on")
    ap.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp")
    ap.add_argument("--keepalive", action="store_true", help="reuse connections (default: one per probe)")
    ap.add_argument("--max-connections", type=int, default=1000)
    ap.add_argument("--uvloop", action="store_true", help="run the prober on uvloop")
    ap.add_argument(
        "--gc-tune", action="store_true", help="gc.freeze() after start-up and a larger gen-0 threshold"
    )
    ap.add_argument(
        "--flap-fraction", type=float, default=0.01, help="fraction of targets that alternate up/down"
    )
    ap.add_argument("--flap-period", type=float, default=10.0)
    ap.add_argument("--json", action="store_true", help="print the summary as JSON too")
    ap.add_argument("--progress", action="store_true", help="print the probe rate every 5 s (stderr)")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.timeout is None:
        args.timeout = min(2.0, args.interval / 2)
    flap_every = round(1 / args.flap_fraction) if args.flap_fraction > 0 else 0
    if args.serve:
        serve(args.ports, flap_every, args.flap_period)
        return

    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            "--ports",
            str(args.ports),
            "--flap-fraction",
            str(args.flap_fraction),
            "--flap-period",
            str(args.flap_period),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        ports = json.loads(server.stdout.readline())
        if args.uvloop:
            import uvloop

            uvloop.install()
        res = asyncio.run(run(args, ports))
        srv_cpu = _proc_cpu(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=10)

    c = res["counters"]
    lat, probe_ms = res["lateness"], res["latencies"]
    rate = c["measured"] / res["window_s"]
    expected = args.targets / args.interval
    flapping = args.targets // flap_every if flap_every else 0
    tph = c["transitions"] / max(1, args.targets) * 3600 / res["wall_s"]
    events = EVENTS_PER_LEASE * 3600 / args.lease + EVENTS_PER_TRANSITION * tph
    events_stable = EVENTS_PER_LEASE * 3600 / args.lease
    naive = EVENTS_PER_PROBE_NAIVE * 3600 / args.interval
    ok = args.targets >= 2000 and args.interval <= 5 and rate >= 0.98 * expected and pct(lat, 99) < 250.0
    loop = "uvloop" if args.uvloop else "asyncio"
    conn = "keep-alive" if args.keepalive else "fresh connection per probe"
    print(
        f"poolctl probe bench: {args.targets} targets, interval {args.interval:g}s, jitter {args.jitter}, "
        f"{args.duration:g}s, client {args.client} ({conn}), {loop}, {len(ports)} target ports, {os.cpu_count()} CPUs"
    )
    print(
        f"  probe rate        : {rate:,.0f} probes/s (schedule needs {expected:,.0f}/s); "
        f"{c['probes']:,} probes, {c['failures']:,} failed ({flapping} targets flapping)"
    )
    print(
        f"  probe-time jitter : p50 {pct(lat, 50):.1f} ms  p99 {pct(lat, 99):.1f} ms  max {max(lat, default=float('nan')):.1f} ms"
        "  (actual start - scheduled, after the first interval)"
    )
    print(f"  probe latency     : p50 {pct(probe_ms, 50):.1f} ms  p99 {pct(probe_ms, 99):.1f} ms")
    srv = f"{100 * srv_cpu / res['wall_s']:.0f}%" if srv_cpu is not None else "?"
    print(
        f"  CPU               : prober {100 * res['cpu_s'] / res['wall_s']:.0f}% of one core, target server {srv}"
    )
    print(
        f"  transitions       : {c['first_transitions']} initial->healthy (once per server), {c['transitions']} "
        f"healthy<->unhealthy = {tph:.1f} per target per hour averaged over all targets"
    )
    print(
        f"  history events    : ~{events_stable:.0f}/target/hour for a stable target (one {args.lease:g}s lease = "
        f"{EVENTS_PER_LEASE} events) + ~{EVENTS_PER_TRANSITION} per transition -> ~{events:.0f}/target/hour in this run; "
        f"one activity per probe would be ~{naive:,.0f}"
    )
    print(f"  target (>= 2,000 targets at 5 s, p99 < 250 ms): {'MET' if ok else 'NOT MET'}")
    if args.json:
        print(
            json.dumps(
                {
                    "targets": args.targets,
                    "interval": args.interval,
                    "client": args.client,
                    "rate": rate,
                    "jitter_p50_ms": pct(lat, 50),
                    "jitter_p99_ms": pct(lat, 99),
                    "latency_p99_ms": pct(probe_ms, 99),
                    "cpu_pct": 100 * res["cpu_s"] / res["wall_s"],
                    "transitions": c["transitions"],
                    "events_per_target_hour": events,
                    "met": ok,
                }
            )
        )


def _proc_cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / tick
    except (OSError, IndexError, ValueError):
        return None


if __name__ == "__main__":
    main()
