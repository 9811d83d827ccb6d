"""Health checks end to end: one worker watching N servers through real HealthCheckWorkflows on a live
Temporal dev server.

    .venv/bin/python bench/health_e2e.py                                  # 200 targets, ~2 minutes
    .venv/bin/python bench/health_e2e.py --targets 1000 --duration 120
    .venv/bin/python bench/health_e2e.py --targets 5000 --duration 120    # the issue's target

Every part runs on 127.0.0.1, is started here and stopped at the end:
- a Temporal dev server (`temporal server start-dev --headless`, in memory, poolctl's search attributes);
- one worker: the real `python -m poolctl.worker` process;
- one target process (asyncio + aiohttp) listening on N + K loopback ports; `GET /health` answers 200,
  or 503 on a port told to fail; it records when each port was probed;
- the N load checks: HealthCheckWorkflows **started directly by this script** (the HealthInput a pool
  would give them; team `bench`, pool `load`, which has no pool workflow, so the transition signal to the
  pool fails and is ignored: the same two history events as one that arrives);
- a real pool `front` of K servers, applied through the real apply path with the `fake` provider (a FAKE
  driver: it starts nothing and hands out K of the target process's ports, option `ports`), a health
  check and a built-in balancer that this script starts as the dev stack does (`balancer_stack.up`).

Prints: time to start the N checks (start calls done; every target probed once), probe rate seen at the
targets against N/interval, probe lateness (probe time minus its schedule, `watch_target`'s
deterministic jitter taken out; measured at the target, relative to each target's most punctual probe),
time from a front target failing (503) to it leaving the balancer's rotation (admin endpoint polled every
50 ms) against unhealthy_threshold x interval + 1 s, CPU of the worker, the Temporal server and the
target process (% of one core), and history events per target per hour (sampled, over the window), with
the events one transition costs measured on the failed front target. Figures only: never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HZ = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------ target process


def serve(n_ports: int) -> None:
    """The target process: GET /health on n_ports loopback ports (200, or 503 once told to fail), and a
    control port: POST /fail/{port}, POST /ok/{port} (each returns the time it took effect), GET /probes
    (every probe's arrival time, by port). Prints {"control": port, "ports": [...]} on its first line."""
    from aiohttp import web

    from bench.probes import listen_on_loopback

    failing: set[int] = set()
    arrivals: dict[int, list[float]] = {}

    async def health(request: web.Request) -> web.Response:
        port = request.transport.get_extra_info("sockname")[1] if request.transport else 0
        arrivals.setdefault(port, []).append(time.time())
        if port in failing:
            return web.Response(status=503, text="failing")
        return web.Response(text="ok")

    async def fail(request: web.Request) -> web.Response:
        failing.add(int(request.match_info["port"]))
        return web.json_response({"at": time.time()})

    async def ok(request: web.Request) -> web.Response:
        failing.discard(int(request.match_info["port"]))
        return web.json_response({"at": time.time()})

    async def probes(request: web.Request) -> web.Response:
        return web.json_response({str(p): ts for p, ts in arrivals.items()})

    async def main() -> None:
        targets = web.Application()
        targets.router.add_get("/health", health)
        ports = await listen_on_loopback(targets, n_ports, backlog=1024)
        control = web.Application()
        control.router.add_post("/fail/{port}", fail)
        control.router.add_post("/ok/{port}", ok)
        control.router.add_get("/probes", probes)
        [control_port] = await listen_on_loopback(control, 1, backlog=128)
        print(json.dumps({"control": control_port, "ports": ports}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# ------------------------------------------------------------------------------ helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children (from /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return sum(int(x) for x in fields[11:15]) / HZ


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))]


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g}s")


FRONT = """
pools:
  - name: front
    provider: fake
    provider_options: {{ports: {ports}}}
    min_servers: {k}
    max_servers: {k}
    auto_healing: false
    health_check:
      type: http
      path: /health
      interval: {interval}
      timeout: {timeout}
      healthy_threshold: 2
      unhealthy_threshold: {unhealthy}
      jitter: "{jitter}"
    load_balancers:
      - name: front
        port: {lb_port}
        admin_port: {admin_port}
"""


# ------------------------------------------------------------------------------ the bench


async def run(args: argparse.Namespace, target: dict, procs: dict[str, int]) -> dict:
    import httpx
    from temporalio.client import Client
    from temporalio.common import SearchAttributePair, TypedSearchAttributes

    from poolctl import search_attributes as sa
    from poolctl.activities.balancers.builtin import BuiltinBalancerDriver
    from poolctl.activities.watch import _jitter
    from poolctl.balancer.credentials import balancer_token
    from poolctl.domain.balancing import MemberState
    from poolctl.domain.health_messages import HealthInput, HealthRuntime
    from poolctl.domain.health_spec import HealthCheckSpec
    from poolctl.domain.names import health_workflow_id, pool_key
    from poolctl.settings import Settings
    from poolctl.starter import balancer_stack, pool_ops
    from poolctl.starter.specfile import parse_spec
    from poolctl.store import inventory
    from poolctl.store.db import session_scope
    from poolctl.temporal_client import connect
    from poolctl.workflows.health_check import HealthCheckWorkflow

    settings = Settings()  # from the POOLCTL_ variables main() set
    client: Client = await connect(settings)
    control = f"http://127.0.0.1:{target['control']}"
    load_ports = target["ports"][: args.targets]
    front_ports = target["ports"][args.targets :]
    spec = HealthCheckSpec(
        type="http",
        path="/health",
        interval=args.interval,
        timeout=args.timeout,
        healthy_threshold=2,
        unhealthy_threshold=args.unhealthy_threshold,
        jitter=args.jitter,
    )
    runtime = HealthRuntime(lease_s=args.lease, heartbeat_timeout_s=settings.health_heartbeat_timeout_s)
    team, pool = "bench", "load"
    ids = [health_workflow_id(team, pool, f"t{i:05d}") for i in range(args.targets)]

    # the front pool (real apply path) and its built-in balancer
    doc = parse_spec(
        FRONT.format(
            ports=json.dumps(front_ports),
            k=len(front_ports),
            interval=args.interval,
            timeout=args.timeout,
            unhealthy=args.unhealthy_threshold,
            jitter=args.jitter,
            lb_port=free_port(),
            admin_port=free_port(),
        ),
        "front.yaml",
    ).model_copy(update={"team": team})
    await pool_ops.apply_documents(client, settings, [doc])
    balancer_stack.up(settings, say=say)
    lb_spec = doc.pools[0].load_balancers[0]
    driver = BuiltinBalancerDriver.from_spec(lb_spec, balancer_token(settings))

    # start the N load checks
    now = datetime.now(UTC)
    cpu0 = {name: cpu_s(pid) for name, pid in procs.items()}
    t0 = time.time()
    sem = asyncio.Semaphore(args.start_concurrency)

    async def start(i: int) -> None:
        async with sem:
            await client.start_workflow(
                HealthCheckWorkflow.run,
                HealthInput(
                    team=team,
                    pool=pool,
                    server_id=f"t{i:05d}",
                    host="127.0.0.1",
                    port=load_ports[i],
                    server_started_at=now,
                    spec=spec,
                    runtime=runtime,
                ),
                id=ids[i],
                task_queue=settings.task_queue,
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(sa.POOL_ID, pool_key(team, pool)),
                        SearchAttributePair(sa.TEAM_ID, team),
                        SearchAttributePair(sa.SERVER_ID, f"t{i:05d}"),
                        SearchAttributePair(sa.HEALTH_STATE, "initial"),
                    ]
                ),
            )

    await asyncio.gather(*(start(i) for i in range(args.targets)))
    t_started = time.time()
    say(f"{args.targets} checks started in {t_started - t0:.1f}s; waiting for every target's first probe")
    async with httpx.AsyncClient(timeout=60) as http:

        async def arrivals() -> dict[int, list[float]]:
            r = await http.get(f"{control}/probes")
            return {int(p): ts for p, ts in r.json().items()}

        while True:
            seen = await arrivals()
            probed = sum(1 for p in load_ports if seen.get(p))
            if probed == len(load_ports):
                break
            if time.time() - t0 > args.start_timeout:
                raise RuntimeError(
                    f"only {probed}/{len(load_ports)} targets probed after {args.start_timeout:g}s"
                )
            await asyncio.sleep(1)
        t_all_probed = max(seen[p][0] for p in load_ports)
        cpu_started = {name: cpu_s(pid) for name, pid in procs.items()}
        t_cpu_started = time.time()
        say(f"every target probed once, {t_all_probed - t0:.1f}s after the first start; warming up")

        # warm-up: one more interval, and the front pool must be in rotation
        async def front_members() -> dict:
            return {m.server_id: m for m in await driver.members()}

        deadline = time.time() + args.start_timeout
        while True:
            members = await front_members()
            if len(members) == len(front_ports) and all(
                m.state == MemberState.IN_ROTATION for m in members.values()
            ):
                break
            if time.time() > deadline:
                raise RuntimeError(f"the front pool is not in rotation: {members}")
            await asyncio.sleep(0.5)
        await asyncio.sleep(args.interval)

        sample = random.Random(1).sample(ids, min(args.history_sample, len(ids)))

        async def history_lengths(wf_ids: list[str]) -> dict[str, int]:
            out = {}
            for wf_id in wf_ids:
                d = await client.get_workflow_handle(wf_id).describe()
                out[wf_id] = d.raw_description.workflow_execution_info.history_length
            return out

        h0 = await history_lengths(sample)
        w0 = time.time()
        cpu_w0 = {name: cpu_s(pid) for name, pid in procs.items()}
        say(f"measuring for {args.duration:g}s")

        # failures: one front server at a time goes 503; time until the balancer takes it out
        with session_scope(settings.resolved_database_url) as s:
            front = [(r.id, r.port) for r in inventory.list_servers(s, team, "front") if r.state == "running"]
        failures: list[dict] = []
        for sid, port in front[: args.failures]:
            fwid = health_workflow_id(team, "front", sid)
            before = (await history_lengths([fwid]))[fwid]
            t_fail = (await http.post(f"{control}/fail/{port}")).json()["at"]
            while (await front_members())[sid].state == MemberState.IN_ROTATION:
                if time.time() - t_fail > 120:
                    raise RuntimeError(f"{sid} still in rotation 120 s after failing")
                await asyncio.sleep(0.05)
            t_out = time.time()
            await asyncio.sleep(2)  # let the transition's bookkeeping land before counting its events
            after = (await history_lengths([fwid]))[fwid]
            failures.append({"server": sid, "out_s": t_out - t_fail, "events": after - before})
            say(f"{sid}: out of rotation {t_out - t_fail:.2f}s after failing")
            await http.post(f"{control}/ok/{port}")
        rest = w0 + args.duration - time.time()
        if rest > 0:
            await asyncio.sleep(rest)
        w1 = time.time()
        cpu_w1 = {name: cpu_s(pid) for name, pid in procs.items()}
        h1 = await history_lengths(sample)
        seen = await arrivals()

    # lateness at the target: probes of the second watch (after initial -> healthy), whose slot k is due
    # at base + k * interval + jitter_k (watch_target skips slots it missed entirely: a gap of about j
    # intervals is j slots); base is estimated from the target's most punctual probe
    lateness: list[float] = []
    probes_in_window = 0
    for i, port in enumerate(load_ports):
        ts = seen.get(port, [])
        probes_in_window += sum(1 for t in ts if w0 <= t < w1)
        later = ts[spec.healthy_threshold :]
        slots = [0]
        for prev, t in zip(later, later[1:], strict=False):
            slots.append(slots[-1] + max(1, round((t - prev) / spec.interval)))
        offsets = [
            t - k * spec.interval - _jitter(ids[i], k, spec.jitter_seconds)
            for k, t in zip(slots, later, strict=False)
        ]
        if not offsets:
            continue
        best = min(offsets)
        lateness += [(o - best) * 1000 for o, t in zip(offsets, later, strict=True) if w0 <= t < w1]
    window = w1 - w0
    events_delta = [h1[w] - h0[w] for w in sample]
    await client.get_workflow_handle(ids[0]).describe()  # Temporal still answers
    return {
        "start_calls_s": t_started - t0,
        "all_probed_s": t_all_probed - t0,
        "rate": probes_in_window / window,
        "due": args.targets / args.interval,
        "lateness": lateness,
        "failures": failures,
        "window_s": window,
        "cpu_window": {n: 100 * (cpu_w1[n] - cpu_w0[n]) / window for n in procs},
        "cpu_start": {n: 100 * (cpu_started[n] - cpu0[n]) / (t_cpu_started - t0) for n in procs},
        "events_per_target_hour": sum(events_delta) / len(events_delta) * 3600 / window,
        "events_per_target_total": sum(h1.values()) / len(h1),
        "bound_s": args.unhealthy_threshold * args.interval + 1,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", type=int, default=200, help="load checks (HealthCheckWorkflows)")
    ap.add_argument("--front", type=int, default=3, help="servers of the real pool behind the balancer")
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--jitter", default="10%")
    ap.add_argument("--unhealthy-threshold", type=int, default=3)
    ap.add_argument("--duration", type=float, default=60.0, help="measurement window (s) after warm-up")
    ap.add_argument("--failures", type=int, default=2, help="front servers failed one after another")
    ap.add_argument(
        "--lease", type=float, default=3600.0, help="probe-loop lease (s), as POOLCTL_HEALTH_LEASE_S"
    )
    ap.add_argument("--history-sample", type=int, default=50, help="load checks whose history is counted")
    ap.add_argument("--start-concurrency", type=int, default=50, help="start calls in flight")
    ap.add_argument("--start-timeout", type=float, default=900.0)
    ap.add_argument("--json", action="store_true", help="print the summary as JSON too")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return
    args.failures = min(args.failures, args.front)
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the finally below stops every process started here
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    tmp = Path(tempfile.mkdtemp(prefix="bench-health-e2e-"))
    py = sys.executable
    temporal = str(Path(py).parent / "temporal")
    from poolctl import search_attributes
    from poolctl.payload_codec import new_key_text

    port = free_port()
    env = dict(os.environ)
    env.update(
        POOLCTL_STATE_DIR=str(tmp / "state"),
        POOLCTL_DATABASE_URL=f"sqlite:///{tmp / 'poolctl.db'}",
        POOLCTL_TEMPORAL_ADDRESS=f"127.0.0.1:{port}",
        POOLCTL_TASK_QUEUE=f"bench-{uuid.uuid4().hex[:6]}",
        POOLCTL_PAYLOAD_KEY=new_key_text(),
        POOLCTL_HEALTH_LEASE_S=str(args.lease),
        POOLCTL_RECONCILE_INTERVAL_S="5",
    )
    os.environ.update({k: v for k, v in env.items() if k.startswith("POOLCTL_")})
    procs: dict[str, subprocess.Popen] = {}
    logs = {n: open(tmp / f"{n}.log", "wb") for n in ("temporal", "worker")}  # noqa: SIM115
    try:
        procs["target"] = subprocess.Popen(
            [py, __file__, "--serve", str(args.targets + args.front)], stdout=subprocess.PIPE, text=True
        )
        assert procs["target"].stdout is not None
        target = json.loads(procs["target"].stdout.readline())
        procs["temporal"] = subprocess.Popen(
            [
                temporal, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port),
                "--log-level", "error", *search_attributes.dev_server_flags(),
            ],
            stdout=logs["temporal"],
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_port(port, 60)
        from poolctl.settings import Settings
        from poolctl.store.db import migrate

        migrate(Settings().resolved_database_url)
        procs["worker"] = subprocess.Popen(
            [py, "-m", "poolctl.worker"], stdout=logs["worker"], stderr=subprocess.STDOUT, env=env
        )
        say(f"dev server :{port}, worker pid {procs['worker'].pid}, {args.targets + args.front} target ports")
        load_before = os.getloadavg()[0]
        res = asyncio.run(run(args, target, {n: p.pid for n, p in procs.items()}))
        res["loadavg"] = (load_before, os.getloadavg()[0])
    finally:
        from poolctl.settings import Settings
        from poolctl.starter import balancer_stack

        balancer_stack.down(Settings(), say=say)
        for name in ("worker", "temporal", "target"):
            p = procs.get(name)
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        for f in logs.values():
            f.close()

    lat = res["lateness"]
    fails = res["failures"]
    print(
        f"poolctl health e2e bench ({datetime.now(UTC):%Y-%m-%d}): {args.targets} HealthCheckWorkflows started "
        f"directly + a {args.front}-server pool behind a built-in balancer; one worker, dev server in memory; "
        f"interval {args.interval:g}s, jitter {args.jitter}, timeout {args.timeout:g}s; {os.cpu_count()} CPUs, "
        f"load average {res['loadavg'][0]:.1f} at start, {res['loadavg'][1]:.1f} at the end"
    )
    print(
        f"  start             : start calls for {args.targets} checks {res['start_calls_s']:.1f}s; every target "
        f"probed once after {res['all_probed_s']:.1f}s"
    )
    print(
        f"  probe rate        : {res['rate']:,.1f} probes/s at the targets (schedule: {res['due']:,.1f}/s) over "
        f"{res['window_s']:.0f}s"
    )
    print(
        f"  probe lateness    : p50 {pct(lat, 50):.1f} ms  p99 {pct(lat, 99):.1f} ms  max {max(lat, default=float('nan')):.1f} ms"
        f"  ({len(lat):,} probes; at the target, against the schedule with its jitter)"
    )
    for f in fails:
        print(
            f"  fail -> out of LB : {f['out_s']:.2f}s for {f['server']} (bound {res['bound_s']:g}s = "
            f"{args.unhealthy_threshold} x {args.interval:g}s + 1s); {f['events']} history events for that transition"
        )
    cw, cs = res["cpu_window"], res["cpu_start"]
    print(
        f"  CPU (one core)    : steady: worker {cw['worker']:.0f}%, Temporal {cw['temporal']:.0f}%, target {cw['target']:.0f}%;"
        f" while starting: worker {cs['worker']:.0f}%, Temporal {cs['temporal']:.0f}%"
    )
    print(
        f"  history events    : {res['events_per_target_hour']:.1f}/target/hour over the window (steady, no "
        f"transition; a {args.lease:g}s lease renewal adds a few); {res['events_per_target_total']:.0f} per target "
        f"since start (start + initial->healthy)"
    )
    if args.json:
        print(
            json.dumps({k: v for k, v in res.items() if k != "lateness"} | {"lateness_p99_ms": pct(lat, 99)})
        )


if __name__ == "__main__":
    main()
