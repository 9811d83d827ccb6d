"""A real local HTTP server process: what the `local` provider runs as a "server" of a pool.

Run it with::

    python -m poolctl.localserver --server-id ID --state-dir DIR [--port 0] [--host 127.0.0.1] [--count N]

On start it binds (port 0 = a free port chosen by the OS) and atomically writes
``{state_dir}/servers/{server_id}.json`` (tmp file + rename) with ``server_id``, ``pid``,
``pgid``, ``host``, ``port``, ``url``, ``started_at`` and ``servers`` (the list of
``{"server_id", "port"}`` it serves). SIGTERM / SIGINT stop it cleanly (the json file is
removed on a clean stop).

**Many servers in one process** (``--count N``, alias ``--ports N``, for benchmarks that
need thousands of targets): the process listens on N ports, each answering as a distinct
server ``ID-0001`` .. ``ID-NNNN`` with its own state (health, delay, load model, counters).
With ``--port 0`` every port is chosen by the OS; with ``--port P`` the ports are
``P .. P+N-1``. One json file ``{ID}.json`` lists them all under ``servers``.

Endpoints (per port, i.e. per simulated server)
------------------------------------------------
``GET /`` (and any other non-admin path, any method)
    The server id as text; JSON (``server_id``, ``port``, ``pid``, ``path``) when the request
    has ``Accept: application/json``. These requests are the "traffic" that drives the load model.
``GET /health``
    ``200 ok`` when healthy. When told unhealthy: ``503 unhealthy`` (mode ``"503"``, the
    default), ``500 error`` (mode ``"500"``) or no answer at all (mode ``"hang"``: the
    request is held until the server is made healthy again or the client gives up).
``GET /metrics``
    Prometheus text format (no labels): gauges ``cpu_percent``, ``memory_percent``,
    ``request_rate`` (EWMA req/s), ``up``; counter ``requests_total`` (all non-admin
    requests, health checks and scrapes included).

Load model: ``request_rate`` is an exponentially weighted moving average of the traffic
request rate with a time constant of 10 s; ``cpu_percent = 5 + 2 * request_rate`` (1 req/s
is about 2 % CPU), capped at 100; ``memory_percent = 30 + 0.2 * (cpu_percent - 5)`` plus a
tiny slow drift, capped at 95. ``/health``, ``/metrics`` and ``/admin/*`` are not traffic.

Admin endpoints (for tests; never delayed, never counted)
---------------------------------------------------------
``POST /admin/health`` ``{"healthy": false, "mode": "503" | "500" | "hang"}``
    Turn unhealthy (``mode`` optional, default ``"503"``) or ``{"healthy": true}`` healthy again.
    ``{"healthy": true, "fail_probes": 2}``: answer the next 2 ``/health`` requests with 503, then
    healthy again (flapping measured in probes, not in time).
``POST /admin/slow`` ``{"delay_ms": 800}``
    Delay every non-admin response (``/``, ``/health``, ``/metrics``) by that much; 0 = off.
``POST /admin/load`` ``{"cpu_percent": 90, "memory_percent": 70}``
    Pin a metric (overrides the model); ``null`` returns it to the model; a key left out is unchanged.
``POST /admin/reset``
    Healthy, no delay, no pinned metrics (counters and the rate estimate are kept).
``POST /admin/exit`` ``{"code": 1}``
    Exit the whole process at once with that code, without clean-up (simulates a crash;
    in ``--count`` mode this takes every port of the process down).
``GET /admin/state``
    JSON of this server's state: ids, port, pid, health, mode, delay, overrides, current metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from poolctl.localserver.records import write_json_atomic

HEALTH_MODES = ("503", "500", "hang")

CPU_BASE = 5.0
CPU_PER_RPS = 2.0
MEM_BASE = 30.0
RATE_TAU_S = 10.0


class LoadModel:
    """EWMA of the request rate (time constant `tau` seconds) and the CPU/memory it implies."""

    def __init__(self, tau: float = RATE_TAU_S, clock: Callable[[], float] = time.monotonic):
        self.tau = tau
        self.clock = clock
        self._rate = 0.0
        self._t = clock()
        self._t0 = self._t

    def hit(self, n: int = 1) -> None:
        now = self.clock()
        self._rate = self._decayed(now) + n / self.tau
        self._t = now

    def _decayed(self, now: float) -> float:
        dt = max(0.0, now - self._t)
        return self._rate * math.exp(-dt / self.tau)

    @property
    def rate(self) -> float:
        """Requests per second, exponentially weighted."""
        return self._decayed(self.clock())

    def cpu_percent(self) -> float:
        return min(100.0, CPU_BASE + CPU_PER_RPS * self.rate)

    def memory_percent(self) -> float:
        drift = 0.5 * math.sin((self.clock() - self._t0) / 60.0)
        return max(0.0, min(95.0, MEM_BASE + 0.2 * (self.cpu_percent() - CPU_BASE) + drift))


@dataclass
class SimServer:
    """The state of one simulated server (one port)."""

    server_id: str
    port: int = 0
    healthy: bool = True
    health_mode: str = "503"
    delay_ms: int = 0
    cpu_override: float | None = None
    memory_override: float | None = None
    requests_total: int = 0
    health_probes: int = 0  # /health requests answered
    fail_probes: int = 0  # the next this many /health requests answer 503 whatever `healthy` says
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    load: LoadModel = field(default_factory=LoadModel)
    # set while healthy; "hang" health requests wait on it
    healthy_event: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.healthy_event.set()

    def cpu_percent(self) -> float:
        return self.cpu_override if self.cpu_override is not None else self.load.cpu_percent()

    def memory_percent(self) -> float:
        return self.memory_override if self.memory_override is not None else self.load.memory_percent()

    def set_health(self, healthy: bool, mode: str | None = None) -> None:
        self.healthy = healthy
        if mode is not None:
            self.health_mode = mode
        if healthy:
            self.healthy_event.set()
        else:
            self.healthy_event.clear()

    def state(self) -> dict[str, Any]:
        return {
            "server_id": self.server_id,
            "port": self.port,
            "pid": os.getpid(),
            "healthy": self.healthy,
            "health_mode": self.health_mode,
            "delay_ms": self.delay_ms,
            "cpu_override": self.cpu_override,
            "memory_override": self.memory_override,
            "cpu_percent": round(self.cpu_percent(), 3),
            "memory_percent": round(self.memory_percent(), 3),
            "request_rate": round(self.load.rate, 4),
            "requests_total": self.requests_total,
            "health_probes": self.health_probes,
            "fail_probes": self.fail_probes,
            "started_at": self.started_at,
        }

    def metrics_text(self) -> str:
        lines = [
            "# HELP cpu_percent Simulated CPU utilisation in percent.",
            "# TYPE cpu_percent gauge",
            f"cpu_percent {self.cpu_percent():.3f}",
            "# HELP memory_percent Simulated memory utilisation in percent.",
            "# TYPE memory_percent gauge",
            f"memory_percent {self.memory_percent():.3f}",
            "# HELP request_rate Exponentially weighted traffic request rate (requests per second).",
            "# TYPE request_rate gauge",
            f"request_rate {self.load.rate:.4f}",
            "# HELP requests_total Requests served (admin paths excluded).",
            "# TYPE requests_total counter",
            f"requests_total {self.requests_total}",
            "# HELP up Whether the server process is up.",
            "# TYPE up gauge",
            "up 1",
        ]
        return "\n".join(lines) + "\n"


SERVERS_KEY: web.AppKey[dict[int, SimServer]] = web.AppKey("servers", dict)


def _server_for(request: web.Request) -> SimServer:
    servers = request.app[SERVERS_KEY]
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if sockname is not None:
        srv = servers.get(sockname[1])
        if srv is not None:
            return srv
    return next(iter(servers.values()))


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (json.JSONDecodeError, ValueError) as exc:
        raise web.HTTPBadRequest(text=f"invalid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return body


async def _delay(srv: SimServer) -> None:
    if srv.delay_ms > 0:
        await asyncio.sleep(srv.delay_ms / 1000.0)


async def handle_health(request: web.Request) -> web.StreamResponse:
    srv = _server_for(request)
    srv.requests_total += 1
    srv.health_probes += 1
    await _delay(srv)
    if srv.fail_probes > 0:
        srv.fail_probes -= 1
        return web.Response(status=503, text="unhealthy (failing a set number of probes)")
    if srv.healthy:
        return web.Response(text="ok")
    if srv.health_mode == "hang":
        await srv.healthy_event.wait()
        return web.Response(text="ok")
    if srv.health_mode == "500":
        return web.Response(status=500, text="error")
    return web.Response(status=503, text="unhealthy")


async def handle_metrics(request: web.Request) -> web.StreamResponse:
    srv = _server_for(request)
    srv.requests_total += 1
    await _delay(srv)
    return web.Response(text=srv.metrics_text(), content_type="text/plain", charset="utf-8")


async def handle_traffic(request: web.Request) -> web.StreamResponse:
    srv = _server_for(request)
    srv.requests_total += 1
    srv.load.hit()
    await _delay(srv)
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response(
            {"server_id": srv.server_id, "port": srv.port, "pid": os.getpid(), "path": request.path}
        )
    return web.Response(text=srv.server_id + "\n")


async def admin_health(request: web.Request) -> web.StreamResponse:
    srv = _server_for(request)
    body = await _json_body(request)
    healthy = body.get("healthy")
    mode = body.get("mode")
    if not isinstance(healthy, bool):
        raise web.HTTPBadRequest(text='expected {"healthy": true|false, "mode": "503"|"500"|"hang"}')
    if mode is not None:
        mode = str(mode)
        if mode not in HEALTH_MODES:
            raise web.HTTPBadRequest(text=f"mode must be one of {', '.join(HEALTH_MODES)}")
    fail_probes = body.get("fail_probes", 0)
    if not isinstance(fail_probes, int) or isinstance(fail_probes, bool) or not 0 <= fail_probes <= 1000:
        raise web.HTTPBadRequest(text="fail_probes must be a whole number from 0 to 1000")
    srv.set_health(healthy, mode)
    srv.fail_probes = fail_probes
    return web.json_response(srv.state())


async def admin_slow(request: web.Request) -> web.StreamResponse:
    srv = _server_for(request)
    body = await _json_body(request)
    delay = body.get("delay_ms", 0)
    if not isinstance(delay, int | float) or isinstance(delay, bool) or delay < 0:
        raise web.HTTPBadRequest(text='expected {"delay_ms": <non-negative number>}')
    srv.delay_ms = int(delay)
    return web.json_response(srv.state())


def _percent(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise web.HTTPBadRequest(text=f"{name} must be a number in [0, 100] or null")
    return float(value)


async def admin_load(request: web.Request) -> web.StreamResponse:
    srv = _server_for(request)
    body = await _json_body(request)
    if "cpu_percent" in body:
        srv.cpu_override = _percent(body["cpu_percent"], "cpu_percent")
    if "memory_percent" in body:
        srv.memory_override = _percent(body["memory_percent"], "memory_percent")
    return web.json_response(srv.state())


async def admin_reset(request: web.Request) -> web.StreamResponse:
    srv = _server_for(request)
    srv.set_health(True, "503")
    srv.delay_ms = 0
    srv.cpu_override = None
    srv.memory_override = None
    return web.json_response(srv.state())


async def admin_exit(request: web.Request) -> web.StreamResponse:
    body = await _json_body(request)
    code = body.get("code", 1)
    code = code if isinstance(code, int) and not isinstance(code, bool) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def admin_state(request: web.Request) -> web.StreamResponse:
    return web.json_response(_server_for(request).state())


def build_app(servers: dict[int, SimServer]) -> web.Application:
    """One application shared by every port; each request is served by the SimServer of its local port."""
    app = web.Application()
    app[SERVERS_KEY] = servers
    app.router.add_get("/health", handle_health)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_post("/admin/health", admin_health)
    app.router.add_post("/admin/slow", admin_slow)
    app.router.add_post("/admin/load", admin_load)
    app.router.add_post("/admin/reset", admin_reset)
    app.router.add_post("/admin/exit", admin_exit)
    app.router.add_get("/admin/state", admin_state)
    app.router.add_route("*", "/{tail:.*}", handle_traffic)
    return app


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def server_ids(server_id: str, count: int) -> list[str]:
    """Ids a process serves: `[server_id]` alone, or `ID-0001 .. ID-NNNN` with --count N > 1."""
    if count <= 1:
        return [server_id]
    return [f"{server_id}-{i:04d}" for i in range(1, count + 1)]


async def serve(
    server_id: str,
    state_dir: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    count: int = 1,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    boot_delay_s: float = 0.0,
) -> None:
    """Serve until SIGTERM/SIGINT (or `stop` is set). Writes the json state file once bound, which is
    `boot_delay_s` seconds after start (a slow boot: nothing answers until then)."""
    servers_dir = Path(state_dir) / "servers"
    servers_dir.mkdir(parents=True, exist_ok=True)
    json_path = servers_dir / f"{server_id}.json"
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    if boot_delay_s > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), boot_delay_s)
        if stop.is_set():
            return

    servers: dict[int, SimServer] = {}
    socks: list[socket.socket] = []
    try:
        for i, sid in enumerate(server_ids(server_id, count)):
            sock = _bind(host, port + i if port else 0)
            socks.append(sock)
            bound_port = sock.getsockname()[1]
            servers[bound_port] = SimServer(server_id=sid, port=bound_port)
    except OSError:
        for s in socks:
            s.close()
        raise

    runner = web.AppRunner(build_app(servers), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    for sock in socks:
        await web.SockSite(runner, sock).start()

    first_port = next(iter(servers))
    info = {
        "server_id": server_id,
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "host": host,
        "port": first_port,
        "url": f"http://{host}:{first_port}",
        "count": len(servers),
        "started_at": datetime.now(UTC).isoformat(),
        "servers": [{"server_id": s.server_id, "port": p} for p, s in servers.items()],
    }
    write_json_atomic(json_path, info)
    print(f"poolctl local server {server_id} pid {os.getpid()} on {host} ports {first_port}..", flush=True)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        for srv in servers.values():  # release requests held by "hang" mode
            srv.healthy_event.set()
        await runner.cleanup()
        with contextlib.suppress(OSError):
            if json.loads(json_path.read_text()).get("pid") == os.getpid():
                json_path.unlink()
        print(f"poolctl local server {server_id} stopped", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m poolctl.localserver", description=__doc__.split("\n")[0])
    p.add_argument("--server-id", required=True)
    p.add_argument("--state-dir", required=True, type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = a free port chosen by the OS")
    p.add_argument(
        "--count",
        "--ports",
        dest="count",
        type=int,
        default=1,
        help="serve N ports from this one process, as servers ID-0001..ID-NNNN",
    )
    p.add_argument(
        "--boot-delay-s", type=float, default=0.0, help="wait this long before serving (a slow boot)"
    )
    args = p.parse_args(argv)
    if args.count < 1:
        p.error("--count must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    asyncio.run(
        serve(
            args.server_id, args.state_dir, args.host, args.port, args.count, boot_delay_s=args.boot_delay_s
        )
    )
    return 0
