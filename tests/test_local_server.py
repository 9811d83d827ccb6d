"""The local server process: endpoints, admin controls, load model, multi-port mode, clean stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from poolctl.localserver.processes import kill_all_local_servers, pid_alive
from poolctl.localserver.server import LoadModel

ROOT = Path(__file__).resolve().parents[1]


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


async def wait_for(cond: Callable[[], Any], within: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + within
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], info: dict[str, Any]):
        self.proc = proc
        self.info = info
        self.url = info["url"]
        self.server_id = info["server_id"]


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    procs: list[subprocess.Popen[bytes]] = []

    async def start(server_id: str = "t-srv", *extra: str) -> Server:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = await asyncio.to_thread(
            subprocess.Popen,
            [
                sys.executable,
                "-m",
                "poolctl.localserver",
                "--server-id",
                server_id,
                "--state-dir",
                str(tmp_path),
            ]
            + list(extra),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        procs.append(proc)
        path = tmp_path / "servers" / f"{server_id}.json"

        def ready() -> dict[str, Any] | None:
            assert proc.poll() is None, "server exited during start-up"
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                return None
            return data if data.get("pid") == proc.pid else None

        info = await wait_for(ready, what="server json")
        return Server(proc, info)

    yield start
    kill_all_local_servers(tmp_path)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        assert not pid_alive(proc.pid)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as c:
        yield c


async def test_root_health_metrics(start_server, client: httpx.AsyncClient) -> None:
    srv = await start_server("srv-abc")
    r = await client.get(srv.url + "/")
    assert r.status_code == 200 and r.text.strip() == "srv-abc"
    r = await client.get(srv.url + "/any/path", headers={"Accept": "application/json"})
    body = r.json()
    assert body["server_id"] == "srv-abc" and body["port"] == srv.info["port"] and body["pid"] == srv.proc.pid
    r = await client.get(srv.url + "/health")
    assert (r.status_code, r.text) == (200, "ok")
    r = await client.get(srv.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "# TYPE cpu_percent gauge" in r.text and "# TYPE requests_total counter" in r.text
    m = parse_metrics(r.text)
    assert 5.0 <= m["cpu_percent"] < 10.0
    assert 0.0 < m["memory_percent"] < 95.0
    assert m["up"] == 1.0
    assert m["requests_total"] == 4.0  # /, /any/path, /health, /metrics
    info = srv.info
    assert info["host"] == "127.0.0.1" and info["pid"] == srv.proc.pid and info["started_at"]


async def test_admin_unhealthy_500_503_and_back(start_server, client: httpx.AsyncClient) -> None:
    srv = await start_server()
    r = await client.post(srv.url + "/admin/health", json={"healthy": False})
    assert r.status_code == 200 and r.json()["healthy"] is False
    assert (await client.get(srv.url + "/health")).status_code == 503
    await client.post(srv.url + "/admin/health", json={"healthy": False, "mode": "500"})
    assert (await client.get(srv.url + "/health")).status_code == 500
    await client.post(srv.url + "/admin/health", json={"healthy": True})
    r = await client.get(srv.url + "/health")
    assert (r.status_code, r.text) == (200, "ok")
    state = (await client.get(srv.url + "/admin/state")).json()
    assert state["healthy"] is True and state["server_id"] == "t-srv"


async def test_admin_health_hang_holds_until_healthy(start_server, client: httpx.AsyncClient) -> None:
    srv = await start_server()
    await client.post(srv.url + "/admin/health", json={"healthy": False, "mode": "hang"})
    with pytest.raises(httpx.ReadTimeout):
        await client.get(srv.url + "/health", timeout=0.3)
    held = asyncio.create_task(client.get(srv.url + "/health", timeout=30))
    await asyncio.sleep(0.1)
    assert not held.done()
    await client.post(srv.url + "/admin/health", json={"healthy": True})
    r = await asyncio.wait_for(held, 10)
    assert r.status_code == 200


async def test_admin_slow(start_server, client: httpx.AsyncClient) -> None:
    srv = await start_server()
    r = await client.post(srv.url + "/admin/slow", json={"delay_ms": 400})
    assert r.json()["delay_ms"] == 400
    t0 = time.monotonic()
    assert (await client.get(srv.url + "/health")).status_code == 200
    assert time.monotonic() - t0 >= 0.4
    with pytest.raises(httpx.ReadTimeout):
        await client.get(srv.url + "/", timeout=0.1)
    t0 = time.monotonic()
    await client.post(srv.url + "/admin/slow", json={"delay_ms": 0})  # admin is never delayed
    assert time.monotonic() - t0 < 0.4
    r = await client.get(srv.url + "/health", timeout=0.3)
    assert r.status_code == 200


async def test_admin_load_pins_and_unpins(start_server, client: httpx.AsyncClient) -> None:
    srv = await start_server()
    await client.post(srv.url + "/admin/load", json={"cpu_percent": 90, "memory_percent": 70})
    m = parse_metrics((await client.get(srv.url + "/metrics")).text)
    assert m["cpu_percent"] == 90.0 and m["memory_percent"] == 70.0
    await client.post(srv.url + "/admin/load", json={"cpu_percent": None})
    m = parse_metrics((await client.get(srv.url + "/metrics")).text)
    assert m["cpu_percent"] < 10.0 and m["memory_percent"] == 70.0  # memory still pinned
    await client.post(srv.url + "/admin/reset")
    m = parse_metrics((await client.get(srv.url + "/metrics")).text)
    assert m["memory_percent"] < 40.0


async def test_admin_rejects_bad_input(start_server, client: httpx.AsyncClient) -> None:
    srv = await start_server()
    assert (await client.post(srv.url + "/admin/health", json={"healthy": "no"})).status_code == 400
    bad_mode = {"healthy": False, "mode": "sleep"}
    assert (await client.post(srv.url + "/admin/health", json=bad_mode)).status_code == 400
    assert (await client.post(srv.url + "/admin/slow", json={"delay_ms": -1})).status_code == 400
    assert (await client.post(srv.url + "/admin/load", json={"cpu_percent": 150})).status_code == 400
    assert (await client.post(srv.url + "/admin/load", content=b"not json")).status_code == 400
    assert (await client.get(srv.url + "/health")).status_code == 200


async def test_cpu_rises_under_request_load(start_server, client: httpx.AsyncClient) -> None:
    srv = await start_server()
    before = parse_metrics((await client.get(srv.url + "/metrics")).text)
    for _ in range(10):
        await asyncio.gather(*(client.get(srv.url + "/") for _ in range(20)))
    after = parse_metrics((await client.get(srv.url + "/metrics")).text)
    assert after["requests_total"] >= 201
    assert after["request_rate"] > before["request_rate"]
    assert after["cpu_percent"] >= before["cpu_percent"] + 5.0
    assert after["memory_percent"] > before["memory_percent"]


def test_load_model_is_ewma_of_request_rate() -> None:
    now = [0.0]
    model = LoadModel(tau=10.0, clock=lambda: now[0])
    assert model.cpu_percent() == pytest.approx(5.0)
    for _ in range(300):  # 1 request/s for 300 s -> rate ~1/s -> cpu ~7 %
        now[0] += 1.0
        model.hit()
    assert model.rate == pytest.approx(1.0, rel=0.1)
    assert model.cpu_percent() == pytest.approx(7.0, abs=0.2)
    now[0] += 60.0  # idle for a minute: back to base
    assert model.cpu_percent() == pytest.approx(5.0, abs=0.05)
    for _ in range(10_000):
        model.hit()
    assert model.cpu_percent() == 100.0  # capped


async def test_sigterm_stops_cleanly(start_server, client: httpx.AsyncClient, tmp_path: Path) -> None:
    srv = await start_server()
    await client.post(srv.url + "/admin/health", json={"healthy": False, "mode": "hang"})
    held = asyncio.create_task(client.get(srv.url + "/health", timeout=30))
    await wait_for(lambda: (srv.proc.poll() is None) and not held.done(), what="held request")
    os.kill(srv.proc.pid, signal.SIGTERM)
    code = await asyncio.to_thread(srv.proc.wait, 10)
    assert code == 0
    assert not (tmp_path / "servers" / "t-srv.json").exists()
    # the held health check is released (answered or closed), not left hanging
    done, _ = await asyncio.wait([held], timeout=10)
    assert done
    if held.exception() is None:
        assert held.result().status_code == 200


async def test_many_ports_in_one_process(start_server, client: httpx.AsyncClient) -> None:
    srv = await start_server("bench", "--count", "5")
    servers = srv.info["servers"]
    assert [s["server_id"] for s in servers] == [f"bench-{i:04d}" for i in range(1, 6)]
    assert len({s["port"] for s in servers}) == 5
    for s in servers:
        r = await client.get(f"http://127.0.0.1:{s['port']}/")
        assert r.text.strip() == s["server_id"]
    # per-port state: making one unhealthy leaves the others healthy
    first, second = servers[0]["port"], servers[1]["port"]
    await client.post(f"http://127.0.0.1:{first}/admin/health", json={"healthy": False})
    assert (await client.get(f"http://127.0.0.1:{first}/health")).status_code == 503
    assert (await client.get(f"http://127.0.0.1:{second}/health")).status_code == 200
