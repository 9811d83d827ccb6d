"""Health checks end to end: one worker watching N servers through real HealthCheckWorkflows on a live
Temporal dev server.

    .venv/bin/python bench/health_e2e.py                                  # 200 targets, ~2 minutes
    .venv/bin/python bench/health_e2e.py --targets 1000 --duration 120
    .venv/bin/python bench/health_e2e.py --targets 5000 --duration 120    # the issue's target

Every part runs on 127.0.0.1, is started here and stopped at the end:
- a Temporal dev server (`temporal server start-dev --headless`, in memory, poolctl's search attributes);
- one worker: the real `python -m poolctl.worker` process;
- one target process listening on N + K loopback ports (a bare asyncio protocol: it stamps each probe
  when its request head arrives); `GET /health` answers 200, or 503 on a port told to fail;
- the N load checks: HealthCheckWorkflows **started directly by this script** (the HealthInput a pool
  would give them; team `bench`, pool `load`, which has no pool workflow, so the transition signal to the
  pool fails and is ignored: the same two history events as one that arrives);
- a real pool `front` of K servers, applied through the real apply path with the `fake` provider (a FAKE
  driver: it starts nothing and hands out K of the target process's ports, option `ports`), a health
  check and a built-in balancer that this script starts as the dev stack does (`balancer_stack.up`).

Prints: time to start the N checks (start calls done, with a progress line every 5 s; every target probed
once), probe rate seen at the targets against N/interval, probe lateness at the target against each
probe's schedule (`base + k x interval + jitter_k`, base read from each running watch's heartbeat), slots
missed,
probe results counted by the worker, time from a front target failing (503) to it leaving the
balancer's rotation (admin endpoint polled every 50 ms) against unhealthy_threshold x interval + 1 s, CPU
of the worker, the Temporal server and the target process (% of one core), and history events per
target per hour (every check, over the window), with the events one transition costs measured on the failed
front target. Figures only: never asserted.

Bounded: each waiting stage gives up after --start-timeout (the figures then say what was not done, in
NOT DONE lines); a process that exits stops the run with an error naming it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HZ = os.sysconf("SC_CLK_TCK")
TMP = Path(tempfile.gettempdir())  # this run's directory (logs, state), set by main()


# ------------------------------------------------------------------------------ target process


def serve(n_ports: int) -> None:
    """The target process: GET /health on n_ports loopback ports (200, or 503 once told to fail), and a
    control port: POST /fail/{port}, POST /ok/{port} (each returns the time it took effect), GET /probes
    (every probe's arrival time, by port). Prints {"control": port, "ports": [...]} on its first line.

    The health ports are a bare asyncio protocol, not aiohttp: a probe's arrival is stamped when its
    request head is read (not after a framework's routing), and 1,000 probes/s cost this shared 2-core
    machine as little as they can."""
    from aiohttp import web

    from bench.probes import listen_on_loopback

    failing: set[int] = set()
    arrivals: dict[int, list[float]] = {}
    ok_reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    fail_reply = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 7\r\nConnection: close\r\n\r\nfailing"

    class Health(asyncio.Protocol):
        def __init__(self, port: int) -> None:
            self.port = port
            self.head = b""
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.head += data
            if b"\r\n\r\n" not in self.head or self.transport is None:
                return
            arrivals.setdefault(self.port, []).append(time.time())
            self.transport.write(fail_reply if self.port in failing else ok_reply)
            self.transport.close()
            self.transport = None

    async def fail(request: web.Request) -> web.Response:
        failing.add(int(request.match_info["port"]))
        return web.json_response({"at": time.time()})

    async def ok(request: web.Request) -> web.Response:
        failing.discard(int(request.match_info["port"]))
        return web.json_response({"at": time.time()})

    async def probes(request: web.Request) -> web.Response:
        return web.json_response({str(p): ts for p, ts in arrivals.items()})

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ports = []
        for _ in range(n_ports):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            await loop.create_server(lambda port=port: Health(port), sock=s, backlog=1024)
            ports.append(port)
        control = web.Application()
        control.router.add_post("/fail/{port}", fail)
        control.router.add_post("/ok/{port}", ok)
        control.router.add_get("/probes", probes)
        [control_port] = await listen_on_loopback(control, 1, backlog=128)
        print(json.dumps({"control": control_port, "ports": ports}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# ------------------------------------------------------------------------------ helpers


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (the sockets are held open until all n are chosen)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


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


async def worker_metrics(http: Any, port: int) -> dict[str, float]:
    """The worker's probe counters by result (`poolctl_probes_total`), from its Prometheus page."""
    out: dict[str, float] = {}
    try:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    except Exception:  # noqa: BLE001 - a figure the bench could not read is reported as missing
        return out
    for line in text.splitlines():
        if line.startswith("poolctl_probes_total{"):
            result = line.split('result="', 1)[1].split('"', 1)[0]
            out[result] = float(line.rsplit(" ", 1)[1])
    return out


async def run(args: argparse.Namespace, target: dict, procs: dict[str, int], metrics_port: int) -> dict:
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
    from poolctl.temporal_client import TemporalUnreachable, connect
    from poolctl.workflows.health_check import HealthCheckWorkflow

    settings = Settings()  # from the POOLCTL_ variables main() set
    deadline = time.time() + 60
    while True:  # the dev server's port opens before its frontend answers
        try:
            client: Client = await connect(settings)
            break
        except TemporalUnreachable:
            if time.time() > deadline:
                raise
            await asyncio.sleep(0.5)
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
    lb_port, admin_port = free_ports(2)
    doc = parse_spec(
        FRONT.format(
            ports=json.dumps(front_ports),
            k=len(front_ports),
            interval=args.interval,
            timeout=args.timeout,
            unhealthy=args.unhealthy_threshold,
            jitter=args.jitter,
            lb_port=lb_port,
            admin_port=admin_port,
        ),
        "front.yaml",
    ).model_copy(update={"team": team})
    await pool_ops.apply_documents(client, settings, [doc])
    balancer_stack.up(settings, say=say)
    lb_spec = doc.pools[0].load_balancers[0]
    driver = BuiltinBalancerDriver.from_spec(lb_spec, balancer_token(settings))

    # start the N load checks, with a progress line every 5 s and a bound (--start-timeout)
    now = datetime.now(UTC)
    cpu0 = {name: cpu_s(pid) for name, pid in procs.items()}
    t0 = time.time()
    sem = asyncio.Semaphore(args.start_concurrency)
    notes: list[str] = []  # what the bench could not do: printed with the figures
    started: set[int] = set()

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
            started.add(i)

    tasks = [asyncio.create_task(start(i)) for i in range(args.targets)]
    while True:
        _, pending = await asyncio.wait(tasks, timeout=5)
        failed = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception()]
        if failed:
            for t in pending:
                t.cancel()
            raise RuntimeError(f"{len(failed)} start calls failed; the first: {failed[0]}")
        if not pending:
            break
        elapsed = time.time() - t0
        say(
            f"started {len(started):,}/{args.targets:,} checks in {elapsed:.0f}s ({len(started) / elapsed:.0f}/s)"
        )
        if elapsed > args.start_timeout:
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            notes.append(
                f"only {len(started):,}/{args.targets:,} checks started within {args.start_timeout:g}s"
            )
            break
    t_started = time.time()
    live = sorted(started)  # indexes of the checks that run
    live_ports = [load_ports[i] for i in live]
    say(f"{len(live):,} checks started in {t_started - t0:.1f}s; waiting for every target's first probe")
    async with httpx.AsyncClient(timeout=60) as http:

        async def arrivals() -> dict[int, list[float]]:
            r = await http.get(f"{control}/probes")
            return {int(p): ts for p, ts in r.json().items()}

        async def wait_probed(times: int, what: str) -> dict[int, list[float]]:
            """Until every live target was probed `times` times (progress every 5 s), or the bound."""
            t_wait = time.time()
            last_say = 0.0
            while True:
                seen = await arrivals()
                probed = sum(1 for p in live_ports if len(seen.get(p, ())) >= times)
                if probed == len(live_ports):
                    return seen
                if time.time() - last_say >= 5:
                    say(f"{what}: {probed:,}/{len(live_ports):,} targets after {time.time() - t_wait:.0f}s")
                    last_say = time.time()
                if time.time() - t_wait > args.start_timeout:
                    notes.append(f"{what}: only {probed:,}/{len(live_ports):,} after {args.start_timeout:g}s")
                    return seen
                await asyncio.sleep(1)

        seen = await wait_probed(1, "probed once")
        firsts = [seen[p][0] for p in live_ports if seen.get(p)]
        t_all_probed = max(firsts, default=float("nan"))
        cpu_started = {name: cpu_s(pid) for name, pid in procs.items()}
        t_cpu_started = time.time()
        say(f"first probes done, {t_all_probed - t0:.1f}s after the first start; warming up")

        # warm-up: every check past initial -> healthy and probing in its second watch (healthy_threshold
        # + 1 probes), the front pool in rotation, then one more interval
        await wait_probed(spec.healthy_threshold + 1, "past initial -> healthy")

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

        async def history_lengths(wf_ids: list[str]) -> dict[str, int]:
            return {w: n for w, (n, _) in (await describe_all(wf_ids, quiet=True)).items()}

        async def describe_all(wf_ids: list[str], quiet: bool = False) -> dict[str, tuple[int, float | None]]:
            """Each check's history length and schedule anchor (`base`, from its running watch's last
            heartbeat; None without one), 20 describe calls in flight, a progress line every 5 s."""
            out: dict[str, tuple[int, float | None]] = {}
            gate = asyncio.Semaphore(20)
            t_d = last = time.time()

            async def one(wf_id: str) -> None:
                nonlocal last
                async with gate:
                    d = await client.get_workflow_handle(wf_id).describe()
                base = None
                for pa in d.raw_description.pending_activities:
                    if pa.activity_type.name == "watch_target" and pa.heartbeat_details.payloads:
                        [details] = await client.data_converter.decode(pa.heartbeat_details.payloads)
                        base = float(details["base"])
                out[wf_id] = (d.raw_description.workflow_execution_info.history_length, base)
                if not quiet and time.time() - last >= 5:
                    last = time.time()
                    say(f"described {len(out):,}/{len(wf_ids):,} checks in {last - t_d:.0f}s")

            await asyncio.gather(*(one(w) for w in wf_ids))
            return out

        live_ids = [ids[i] for i in live]
        d0 = await describe_all(live_ids)
        m0 = await worker_metrics(http, metrics_port)
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
                    notes.append(f"{sid} still in rotation 120 s after failing")
                    break
                await asyncio.sleep(0.05)
            else:
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
        window_planned = w1 - w0
        cpu_w1 = {name: cpu_s(pid) for name, pid in procs.items()}
        m1 = await worker_metrics(http, metrics_port)
        seen = await arrivals()
        d1 = await describe_all(live_ids)

    # Lateness at the target, for every check: each probe against its slot in the check's running watch,
    # base + k * interval + jitter_k, base read from the watch's heartbeat (a check whose watch changed in
    # the window, or that has no heartbeat yet, is left out and counted). A probe is placed in the latest
    # slot due before it arrived, so one later than a whole interval shows as a missed slot.
    def scheduled(wf_id: str, base: float, k: int) -> float:
        return base + k * spec.interval + _jitter(wf_id, k, spec.jitter_seconds)

    exact: list[float] = []
    missed = 0
    left_out = 0
    probes_in_window = 0
    for i in live:
        wf_id = ids[i]
        ts = [t for t in seen.get(load_ports[i], []) if w0 <= t < w1]
        probes_in_window += len(ts)
        base = d1[wf_id][1]
        if base is None or d0[wf_id][1] != base:
            left_out += 1
            continue
        for t in ts:
            k = math.floor((t - base) / spec.interval)
            if t < scheduled(wf_id, base, k):
                k -= 1
            exact.append((t - scheduled(wf_id, base, k)) * 1000)
        # slots due in the window (a margin of one interval at the end for probes under way)
        k_first = math.ceil((w0 - base) / spec.interval) - 1
        due = [k for k in range(k_first, k_first + int(window_planned / spec.interval) + 3)
               if w0 <= scheduled(wf_id, base, k) < w1 - spec.interval]  # fmt: skip
        made = [t for t in ts if t < w1 - spec.interval + spec.jitter_seconds]
        missed += max(0, len(due) - len(made))
    window = w1 - w0
    events_delta = [d1[w][0] - d0[w][0] for w in live_ids]
    await client.get_workflow_handle(ids[live[0]]).describe()  # Temporal still answers
    return {
        "started": len(live),
        "start_calls_s": t_started - t0,
        "all_probed_s": t_all_probed - t0,
        "rate": probes_in_window / window,
        "due": len(live) / args.interval,
        "exact": exact,
        "exact_checks": len(live) - left_out,
        "missed_slots": missed,
        "probe_results": {k: m1.get(k, 0) - m0.get(k, 0) for k in ("success", "failure")},
        "failures": failures,
        "window_s": window,
        "cpu_window": {n: 100 * (cpu_w1[n] - cpu_w0[n]) / window for n in procs},
        "cpu_start": {n: 100 * (cpu_started[n] - cpu0[n]) / (t_cpu_started - t0) for n in procs},
        "events_per_target_hour": sum(events_delta) / len(events_delta) * 3600 / window,
        "events_per_target_total": sum(n for n, _ in d1.values()) / len(d1),
        "bound_s": args.unhealthy_threshold * args.interval + 1,
        "notes": notes,
    }


async def watched(bench: Any, procs: dict[str, subprocess.Popen]) -> dict:
    """Run the bench, stopping it with a clear error as soon as a process it depends on exits."""
    task = asyncio.ensure_future(bench)
    while not task.done():
        await asyncio.wait([task], timeout=1)
        dead = {n: p.returncode for n, p in procs.items() if p.poll() is not None}
        if dead and not task.done():
            task.cancel()
            raise RuntimeError(f"exited during the bench (exit codes): {dead}; see the logs under {TMP}")
    return task.result()


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

    global TMP
    tmp = TMP = Path(tempfile.mkdtemp(prefix="bench-health-e2e-"))
    py = sys.executable
    temporal = str(Path(py).parent / "temporal")
    from poolctl import search_attributes
    from poolctl.payload_codec import new_key_text

    env = dict(os.environ)
    env.update(
        POOLCTL_STATE_DIR=str(tmp / "state"),
        POOLCTL_DATABASE_URL=f"sqlite:///{tmp / 'poolctl.db'}",
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
        # chosen after the target process took its ports, so the kernel cannot hand out one of them (the
        # dev server's port chosen before them was taken by a target port now and then at 5,000 targets)
        port, metrics_port = free_ports(2)
        env["POOLCTL_TEMPORAL_ADDRESS"] = os.environ["POOLCTL_TEMPORAL_ADDRESS"] = f"127.0.0.1:{port}"
        env["POOLCTL_WORKER_METRICS_PORT"] = str(metrics_port)
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
        res = asyncio.run(
            watched(run(args, target, {n: p.pid for n, p in procs.items()}, metrics_port), procs)
        )
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

    fails = res["failures"]
    print(
        f"poolctl health e2e bench ({datetime.now(UTC):%Y-%m-%d}): {args.targets} HealthCheckWorkflows started "
        f"directly + a {args.front}-server pool behind a built-in balancer; one worker, dev server in memory; "
        f"interval {args.interval:g}s, jitter {args.jitter}, timeout {args.timeout:g}s; {os.cpu_count()} CPUs, "
        f"load average {res['loadavg'][0]:.1f} at start, {res['loadavg'][1]:.1f} at the end"
    )
    print(
        f"  start             : {res['started']:,} of {args.targets:,} checks started in {res['start_calls_s']:.1f}s; every target "
        f"probed once after {res['all_probed_s']:.1f}s"
    )
    print(
        f"  probe rate        : {res['rate']:,.1f} probes/s at the targets (schedule: {res['due']:,.1f}/s) over "
        f"{res['window_s']:.0f}s"
    )
    ex = res["exact"]
    pr = res["probe_results"]
    print(
        f"  probe lateness    : p50 {pct(ex, 50):.1f} ms  p99 {pct(ex, 99):.1f} ms  max {max(ex, default=float('nan')):.1f} ms"
        f"  ({len(ex):,} probes of {res['exact_checks']:,} checks; at the target, against each probe's "
        f"schedule: base from the watch's heartbeat + k x interval + its jitter); {res['missed_slots']} slots missed"
    )
    print(
        f"  probe results     : {pr.get('success', float('nan')):,.0f} ok, {pr.get('failure', float('nan')):,.0f} failed "
        f"in the window (the worker's poolctl_probes_total, load and front checks; only the front servers told to "
        f"fail should fail)"
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
    for note in res["notes"]:
        print(f"  NOT DONE          : {note}")
    if args.json:
        print(
            json.dumps(
                {k: v for k, v in res.items() if k not in ("lateness", "exact")}
                | {"lateness_p50_ms": pct(ex, 50), "lateness_p99_ms": pct(ex, 99)}
            )
        )


if __name__ == "__main__":
    main()
