"""Built-in proxy vs HAProxy on the same backends, in one run.

    .venv/bin/python bench/proxy.py [--duration 10] [--connections 32] [--backends 3]

Starts one aiohttp backend process serving `--backends` ports, then measures, one after the other, with
the same load generator and settings: the backends directly (reference), HAProxy (Debian 2.6, dynamic
servers added through the Runtime API, sticky sessions on), and the built-in proxy (`python -m
poolctl.balancer`, uvloop, statistics always on, sticky sessions on). Prints requests/s and p99 for each
and the ratio built-in / HAProxy (target >= 0.5).

Load generator: `wrk` (C, epoll, one thread by default) when installed; as root the script installs
Debian's `wrk` with apt-get if it is missing. Without it, an aiohttp client in a separate process (it
saturates near the proxy's own rate on a 2-core machine, so its figures understate both proxies).
Every request comes without the sticky cookie, so each one is balanced and answered with Set-Cookie:
the most expensive sticky path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


# --- backends --------------------------------------------------------------------------------------------


def serve_backends(ports: list[int]) -> None:
    """Child process: one aiohttp app per port answering a small body (its port) to every request."""
    from aiohttp import web

    async def main() -> None:
        runners = []
        for port in ports:
            body = f"backend {port}\n".encode() + b"x" * 64

            async def handler(request: web.Request, body: bytes = body) -> web.Response:
                return web.Response(body=body, content_type="text/plain")

            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", handler)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
            runners.append(runner)
        print("ready", flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


# --- load generators -----------------------------------------------------------------------------------------


def ensure_wrk(install: bool) -> str | None:
    found = shutil.which("wrk")
    if found or not install or os.geteuid() != 0:
        return found
    print("installing Debian's wrk with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"], env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)  # fmt: skip
    return shutil.which("wrk")


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def run_wrk(wrk: str, url: str, duration: float, connections: int, threads: int) -> tuple[float, float, int]:
    out = subprocess.run(
        [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{duration:g}s", "--latency", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    p99 = float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    return rps, p99, errors


def aiohttp_client(url: str, duration: float, connections: int) -> None:
    """Child process: `connections` keep-alive workers for `duration` s; prints 'rps p99 errors'."""
    import aiohttp

    async def main() -> None:
        lat: list[float] = []
        errors = 0
        end = time.perf_counter() + duration

        async def worker(session: aiohttp.ClientSession) -> None:
            nonlocal errors
            while time.perf_counter() < end:
                t = time.perf_counter()
                try:
                    async with session.get(url) as r:
                        await r.read()
                        if r.status >= 400:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1
                lat.append(time.perf_counter() - t)

        conn = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=conn, cookie_jar=aiohttp.DummyCookieJar()) as session:
            start = time.perf_counter()
            await asyncio.gather(*(worker(session) for _ in range(connections)))
            took = time.perf_counter() - start
        lat.sort()
        print(f"{len(lat) / took} {lat[int(len(lat) * 0.99)] if lat else float('nan')} {errors}")

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def run_aiohttp(url: str, duration: float, connections: int) -> tuple[float, float, int]:
    out = subprocess.run(
        [sys.executable, __file__, "--client", url, "--duration", str(duration), "--connections", str(connections)],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return float(out[0]), float(out[1]), int(out[2])


# --- the run ---------------------------------------------------------------------------------------------------


async def start_haproxy(ports: list[int], nbthread: int | None) -> tuple[object, int]:
    from poolctl.activities.balancers.haproxy import HAProxyProcess, temp_workdir
    from poolctl.domain.balancer_spec import LoadBalancerSpec
    from poolctl.domain.balancing import Member

    port = free_port()
    spec = LoadBalancerSpec(
        name="bench", port=port, driver="haproxy", sticky_sessions=True, health_check_enabled=False
    )
    hap = HAProxyProcess(spec, temp_workdir("poolctl-bench-"), nbthread=nbthread)
    await hap.start()
    await hap.driver().sync_members(
        [Member(server_id=f"b{i}", address=f"127.0.0.1:{p}") for i, p in enumerate(ports)]
    )
    return hap, port


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--backends", type=int, default=3)
    ap.add_argument(
        "--haproxy-threads", type=int, default=1, help="HAProxy nbthread (the built-in proxy is one process)"
    )
    ap.add_argument("--generator", choices=["auto", "wrk", "aiohttp"], default="auto")
    ap.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    ap.add_argument("--serve-backends", help=argparse.SUPPRESS)
    ap.add_argument("--client", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_backends:
        serve_backends([int(p) for p in args.serve_backends.split(",")])
        return 0
    if args.client:
        aiohttp_client(args.client, args.duration, args.connections)
        return 0

    from poolctl.activities.balancers.haproxy import haproxy_binary

    if haproxy_binary() is None:
        print("HAProxy is not installed: run `make system-deps`", file=sys.stderr)
        return 2
    wrk = None if args.generator == "aiohttp" else ensure_wrk(not args.no_install)
    if args.generator == "wrk" and wrk is None:
        print("wrk is not installed", file=sys.stderr)
        return 2
    gen = f"wrk ({args.threads} thread(s))" if wrk else "aiohttp client (separate process)"

    def measure(url: str) -> tuple[float, float, int]:
        if wrk:
            run_wrk(wrk, url, 1.0, args.connections, args.threads)  # warm-up: connections, pools
            return run_wrk(wrk, url, args.duration, args.connections, args.threads)
        run_aiohttp(url, 1.0, args.connections)
        return run_aiohttp(url, args.duration, args.connections)

    ports = [free_port() for _ in range(args.backends)]
    procs: list[subprocess.Popen[bytes]] = []
    backend = subprocess.Popen(
        [sys.executable, __file__, "--serve-backends", ",".join(map(str, ports))], stdout=subprocess.PIPE
    )
    procs.append(backend)
    loop = asyncio.new_event_loop()
    hap = None
    try:
        assert backend.stdout is not None
        backend.stdout.readline()
        for p in ports:
            wait_port(p)
        results: dict[str, tuple[float, float, int]] = {}
        results["direct (one backend)"] = measure(f"http://127.0.0.1:{ports[0]}/")

        hap, hport = loop.run_until_complete(start_haproxy(ports, args.haproxy_threads))
        results["haproxy"] = measure(f"http://127.0.0.1:{hport}/")
        loop.run_until_complete(hap.stop())  # type: ignore[attr-defined]
        hap = None

        lport, aport = free_port(), free_port()
        members = [arg for i, p in enumerate(ports) for arg in ("--member", f"b{i}=127.0.0.1:{p}")]
        builtin = subprocess.Popen(
            [sys.executable, "-m", "poolctl.balancer", "--listen", f"127.0.0.1:{lport}", "--admin", f"127.0.0.1:{aport}",
             "--token", "bench", "--sticky", "--log-level", "WARNING", *members],
            stdout=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
        procs.append(builtin)
        wait_port(lport)
        results["builtin"] = measure(f"http://127.0.0.1:{lport}/")
    finally:
        if hap is not None:
            loop.run_until_complete(hap.stop())  # type: ignore[attr-defined]
        for p in reversed(procs):
            p.terminate()
            p.wait(10)
        loop.close()

    print(f"\nload: {gen}, {args.connections} connections, {args.duration:g} s per run, {args.backends} backends, "
          f"{os.cpu_count()} CPUs; sticky sessions on; HAProxy nbthread {args.haproxy_threads}")  # fmt: skip
    print(f"{'target':<22} {'requests/s':>12} {'p99':>10} {'errors':>7}")
    for name, (rps, p99, errs) in results.items():
        print(f"{name:<22} {rps:>12.0f} {p99 * 1000:>8.2f}ms {errs:>7}")
    ratio = results["builtin"][0] / results["haproxy"][0]
    print(
        f"\nbuilt-in / HAProxy requests/s = {ratio:.2f} (target >= 0.5: {'met' if ratio >= 0.5 else 'NOT met'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
