"""Built-in proxy vs HAProxy in front of a backend that cannot be the bottleneck, in one run.

    .venv/bin/python bench/proxy.py [--duration 10] [--connections 32] [--rounds 3] [--baseline DIR] [--asyncio]

The backend is an HAProxy instance that answers `200` itself (`http-request return status 200`) on
`--backends` ports: C on both sides, so neither proxy waits on a Python server. The proxies under test,
each balancing over those ports with sticky sessions on: HAProxy (Debian 2.6, nbthread 1, dynamic servers
added through the Runtime API, as poolctl's driver runs it) and the built-in proxy (`python -m
poolctl.balancer`, uvloop, statistics always on). Load: `wrk` (Debian's; scripts/install-system-deps.sh
installs it), 1 thread, 32 connections, every request without the cookie, so each one is balanced and
answered with Set-Cookie (the most expensive sticky path).

For each proxy it prints requests/s, p99 latency and CPU µs per request (the proxy process's user +
system CPU time during the run, from /proc/<pid>/stat, divided by the requests wrk completed), and the
system (kernel: sockets) part of it. `--asyncio` also runs the built-in proxy on asyncio's own loop. Rounds
alternate between the proxies so background load hits both alike; the summary takes the median round.
`--baseline DIR` also runs the built-in proxy of another revision in the same rounds (before/after in one
run): DIR holds that revision as a `poolctl` folder, e.g.
`mkdir -p /tmp/base/poolctl && git archive main | tar -x -C /tmp/base/poolctl` then `--baseline /tmp/base`.
Targets (issue 13): built-in ≥ 0.5× HAProxy's requests/s, ≤ 1.5× HAProxy's CPU µs per request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of one process (its threads included), from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime, stime


def start_c_backend(binary: str, ports: list[int], workdir: Path) -> subprocess.Popen[bytes]:
    """HAProxy answering 200 with a small body itself, on every port: the backend of both proxies."""
    binds = "\n".join(f"  bind 127.0.0.1:{p}" for p in ports)
    cfg = workdir / "backend.cfg"
    cfg.write_text(
        "global\n  nbthread 1\n  maxconn 4096\n"
        "defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n"
        f"frontend answer\n{binds}\n"
        '  http-request return status 200 content-type text/plain string "backend ok"\n'
    )
    proc = subprocess.Popen(
        [binary, "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for p in ports:
        wait_port(p)
    return proc


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass
class Run:
    rps: float
    p99_s: float
    requests: int
    errors: int
    cpu_s: float  # user + system
    sys_s: float  # system (the kernel's share: sockets)

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / self.requests * 1e6 if self.requests else float("nan")

    @property
    def sys_us_per_request(self) -> float:
        return self.sys_s / self.requests * 1e6 if self.requests else float("nan")


def run_wrk(wrk: str, url: str, duration: float, connections: int, pid: int | None) -> Run:
    before = cpu_seconds(pid) if pid else (0.0, 0.0)
    out = subprocess.run(
        [wrk, "-t", "1", "-c", str(connections), "-d", f"{duration:g}s", "--latency", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    after = cpu_seconds(pid) if pid else (float("nan"), float("nan"))
    cpu, sys_s = sum(after) - sum(before), after[1] - before[1]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    p99 = float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    return Run(rps, p99, requests, errors, cpu, sys_s)


async def start_haproxy(ports: list[int]) -> tuple[object, int]:
    from poolctl.domain.balancer_spec import LoadBalancerSpec
    from poolctl.domain.balancing import Member
    from poolctl.starter.haproxy_stack import HAProxyProcess, temp_workdir

    port = free_port()
    spec = LoadBalancerSpec(
        name="bench", port=port, driver="haproxy", sticky_sessions=True, health_check_enabled=False
    )
    hap = HAProxyProcess(spec, temp_workdir("poolctl-bench-"), nbthread=1)
    await hap.start()
    await hap.driver().sync_members(
        [Member(server_id=f"b{i}", address=f"127.0.0.1:{p}") for i, p in enumerate(ports)]
    )
    return hap, port


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--backends", type=int, default=3, help="ports of the C backend (members)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per proxy (median reported)")
    ap.add_argument("--baseline", help="folder holding another revision as poolctl/: its built-in proxy too")
    ap.add_argument(
        "--asyncio", action="store_true", help="also the built-in proxy on asyncio's own loop (--no-uvloop)"
    )
    ap.add_argument(
        "--pure",
        action="store_true",
        help="also the built-in proxy with its hot path not compiled (make native)",
    )
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from poolctl.balancer import native
    from poolctl.starter.haproxy_stack import haproxy_binary

    binary = haproxy_binary()
    wrk = shutil.which("wrk")
    if binary is None or wrk is None:
        print("HAProxy and wrk are needed: run `make system-deps`", file=sys.stderr)
        return 2

    def measure(url: str, pid: int | None) -> Run:
        run_wrk(wrk, url, 1.0, args.connections, None)  # warm-up: connections, pools, caches
        return run_wrk(wrk, url, args.duration, args.connections, pid)

    ports = [free_port() for _ in range(args.backends)]
    workdir = Path(tempfile.mkdtemp(prefix="poolctl-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    loop = asyncio.new_event_loop()
    hap = None
    results: dict[str, list[Run]] = {"direct (C backend)": [], "haproxy": [], "builtin": []}
    builtins: dict[str, tuple[int, int]] = {}  # name -> (port, pid)
    try:
        backend = start_c_backend(binary, ports, workdir)
        procs.append(backend)
        hap, hport = loop.run_until_complete(start_haproxy(ports))
        hpid = hap.proc.pid  # type: ignore[attr-defined]
        members = [arg for i, p in enumerate(ports) for arg in ("--member", f"b{i}=127.0.0.1:{p}")]
        variants: list[tuple[str, str | None, list[str], dict[str, str]]] = [
            ("builtin", None, [], {}),
            ("builtin (baseline)", args.baseline, [], {}),
        ]
        if args.asyncio:
            variants.append(("builtin (asyncio)", None, ["--no-uvloop"], {}))
        if args.pure:
            variants.append(("builtin (pure Python)", None, [], {native.DISABLE_ENV: "1"}))
        for name, pythonpath, extra, extra_env in variants:
            if name == "builtin (baseline)" and not pythonpath:
                continue
            lport, aport = free_port(), free_port()
            env = {**os.environ, **extra_env}
            if pythonpath:
                env["PYTHONPATH"] = str(Path(pythonpath).resolve())
            builtin = subprocess.Popen(
                [sys.executable, "-m", "poolctl.balancer", "--listen", f"127.0.0.1:{lport}", "--admin", f"127.0.0.1:{aport}",
                 "--token", "bench", "--sticky", "--log-level", "WARNING", *members, *extra],
                stdout=subprocess.DEVNULL, cwd=pythonpath or ROOT, env=env,
            )  # fmt: skip
            procs.append(builtin)
            wait_port(lport)
            builtins[name] = (lport, builtin.pid)
            results[name] = []
        results["direct (C backend)"].append(measure(f"http://127.0.0.1:{ports[0]}/", backend.pid))
        for _ in range(args.rounds):
            results["haproxy"].append(measure(f"http://127.0.0.1:{hport}/", hpid))
            for name, (lport, pid) in builtins.items():
                results[name].append(measure(f"http://127.0.0.1:{lport}/", pid))
    finally:
        if hap is not None:
            loop.run_until_complete(hap.stop())  # type: ignore[attr-defined]
        for p in reversed(procs):
            p.terminate()
            p.wait(10)
        loop.close()
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"\nbuilt-in hot path: {'compiled (make native)' if native.built() else 'pure Python'}; loop: uvloop"
    )
    print(
        f"load: wrk 1 thread, {args.connections} connections, {args.duration:g} s per run, {args.rounds} "
        f"alternating round(s); C backend on {args.backends} ports; sticky sessions on; {os.cpu_count()} CPUs"
    )
    print(
        f"{'target':<20} {'round':>5} {'requests/s':>11} {'p99':>9} {'CPU µs/req':>11} {'of it sys':>10} {'errors':>7}"
    )
    median: dict[str, Run] = {}
    for name, runs in results.items():
        for i, r in enumerate(runs):
            print(
                f"{name:<20} {i + 1:>5} {r.rps:>11.0f} {r.p99_s * 1000:>7.2f}ms {r.cpu_us_per_request:>11.1f} "
                f"{r.sys_us_per_request:>10.1f} {r.errors:>7}"
            )
        median[name] = sorted(runs, key=lambda r: r.rps)[len(runs) // 2]
    cpu = {name: statistics.median(r.cpu_us_per_request for r in runs) for name, runs in results.items()}
    print("\nmedian round:")
    for name, r in median.items():
        print(f"  {name:<20} {r.rps:>8.0f} req/s  p99 {r.p99_s * 1000:6.2f} ms  {cpu[name]:6.1f} µs CPU/req")
    h = median["haproxy"]
    for name in builtins:
        rps_ratio = median[name].rps / h.rps
        cpu_ratio = cpu[name] / cpu["haproxy"]
        print(
            f"{name} / HAProxy: requests/s {rps_ratio:.2f} (target >= 0.5: {'met' if rps_ratio >= 0.5 else 'NOT met'}), "
            f"CPU per request {cpu_ratio:.2f} (target <= 1.5: {'met' if cpu_ratio <= 1.5 else 'NOT met'})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
