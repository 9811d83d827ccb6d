"""The local provider (real processes), the fake provider and the provider registry."""

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

from poolctl.activities.providers.base import (
    ProviderConfigError,
    ProviderError,
    ProviderQuotaError,
    ProvisionRequest,
    ServerInfo,
    ServerState,
)
from poolctl.activities.providers.fake import FakeProvider
from poolctl.activities.providers.local import LocalProvider, server_id_for
from poolctl.activities.providers.registry import clear_provider_cache, get_provider, kill_all_local_servers
from poolctl.domain.provider_faults import draw
from poolctl.localserver.processes import pid_alive

ROOT = Path(__file__).resolve().parents[1]


async def wait_for(cond: Callable[[], Any], within: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + within
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def req(key: str, pool: str = "team/web", **options: Any) -> ProvisionRequest:
    return ProvisionRequest(pool=pool, idempotency_key=key, options=options)


def live_pids(state_dir: Path) -> set[int]:
    pids = set()
    for path in (state_dir / "servers" / "records").glob("*.json"):
        rec = json.loads(path.read_text())
        if rec.get("pid") and pid_alive(rec["pid"], rec.get("proc_start")):
            pids.add(rec["pid"])
    return pids


@pytest.fixture
async def provider(tmp_path: Path) -> AsyncIterator[LocalProvider]:
    prov = LocalProvider(tmp_path)
    yield prov
    kill_all_local_servers(tmp_path)
    assert live_pids(tmp_path) == set(), "teardown left server processes running"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as c:
        yield c


async def answers(client: httpx.AsyncClient, info: ServerInfo) -> str:
    r = await client.get(info.url + "/")
    assert r.status_code == 200
    return r.text.strip()


# ------------------------------------------------------------------ local provider


async def test_provision_twice_same_key_one_server(provider: LocalProvider, client, tmp_path: Path) -> None:
    first = await provider.provision(req("scale/web/1/0"))
    assert first.state == ServerState.RUNNING
    assert first.server_id == server_id_for("scale/web/1/0") and first.server_id.startswith("srv-")
    assert first.host == "127.0.0.1" and first.port > 0 and first.pid
    assert first.provider == "local" and first.pool == "team/web"
    assert await answers(client, first) == first.server_id
    assert (await client.get(first.url + "/health")).text == "ok"

    second = await provider.provision(req("scale/web/1/0"))
    assert (second.server_id, second.pid, second.port) == (first.server_id, first.pid, first.port)
    assert second.state == ServerState.RUNNING
    assert len(await provider.list_servers()) == 1
    assert live_pids(tmp_path) == {first.pid}
    runtime = json.loads((tmp_path / "servers" / f"{first.server_id}.json").read_text())
    assert runtime["pid"] == first.pid and runtime["port"] == first.port and runtime["started_at"]


async def test_concurrent_same_key_yields_one_process(provider: LocalProvider, tmp_path: Path) -> None:
    other = LocalProvider(tmp_path)  # a second driver instance, as a second worker would have
    results = await asyncio.gather(
        provider.provision(req("k")), other.provision(req("k")), provider.provision(req("k"))
    )
    assert len({(r.server_id, r.pid, r.port) for r in results}) == 1
    assert all(r.state == ServerState.RUNNING for r in results)
    assert live_pids(tmp_path) == {results[0].pid}


async def test_concurrent_distinct_keys(provider: LocalProvider, client) -> None:
    infos = await asyncio.gather(*(provider.provision(req(f"scale/web/2/{i}")) for i in range(6)))
    assert len({i.server_id for i in infos}) == 6
    assert len({i.port for i in infos}) == 6
    assert len({i.pid for i in infos}) == 6
    for info in infos:
        assert info.state == ServerState.RUNNING
        assert await answers(client, info) == info.server_id
    assert len(await provider.list_servers("team/web")) == 6
    assert await provider.list_servers("team/other") == []


async def test_terminate_twice_and_unknown(provider: LocalProvider, client, tmp_path: Path) -> None:
    info = await provider.provision(req("t1"))
    gone = await provider.terminate(info.server_id)
    assert gone is not None and gone.state == ServerState.TERMINATED
    assert not pid_alive(info.pid)
    with pytest.raises(httpx.ConnectError):
        await client.get(info.url + "/health")
    again = await provider.terminate(info.server_id)
    assert again is not None and again.state == ServerState.TERMINATED
    assert await provider.terminate("srv-doesnotexist") is None
    described = await provider.describe(info.server_id)
    assert described is not None and described.state == ServerState.TERMINATED
    assert "crashed" not in described.details
    assert await provider.describe("srv-doesnotexist") is None
    # the same key after termination: the terminated server, never a second one
    same = await provider.provision(req("t1"))
    assert same.server_id == info.server_id and same.state == ServerState.TERMINATED
    assert live_pids(tmp_path) == set()
    listed = await provider.list_servers()
    assert [s.state for s in listed] == [ServerState.TERMINATED]


async def test_crash_then_provision_restarts_under_same_id(provider: LocalProvider, client) -> None:
    info = await provider.provision(req("crashy"))
    os.kill(info.pid, signal.SIGKILL)
    await wait_for(lambda: not pid_alive(info.pid), what="process death")
    crashed = await provider.describe(info.server_id)
    assert crashed is not None and crashed.state == ServerState.TERMINATED and crashed.details["crashed"]

    back = await provider.provision(req("crashy"))
    assert back.server_id == info.server_id and back.state == ServerState.RUNNING
    assert back.pid != info.pid and pid_alive(back.pid)
    assert back.details["restarts"] == 1
    assert await answers(client, back) == info.server_id
    assert len(await provider.list_servers()) == 1


async def test_admin_exit_crash_is_detected(provider: LocalProvider, client) -> None:
    info = await provider.provision(req("exit"))
    with pytest.raises(httpx.HTTPError):
        await client.post(info.url + "/admin/exit", json={"code": 3})
    await wait_for(lambda: not pid_alive(info.pid), what="process exit")
    described = await provider.describe(info.server_id)
    assert (
        described is not None and described.state == ServerState.TERMINATED and described.details["crashed"]
    )


async def test_worker_dies_mid_provision_retry_adopts(provider: LocalProvider, tmp_path: Path) -> None:
    sid = server_id_for("adopt")
    record = tmp_path / "servers" / "records" / f"{sid}.json"
    task = asyncio.create_task(provider.provision(req("adopt")))

    def spawned_pid() -> int | None:
        try:
            return json.loads(record.read_text()).get("pid")
        except (OSError, ValueError):
            return None

    pid = await wait_for(spawned_pid, what="intent record with pid")
    task.cancel()  # the "worker" goes away before the server is ready
    with pytest.raises(asyncio.CancelledError):
        await task
    retry = LocalProvider(tmp_path)  # a new worker
    info = await retry.provision(req("adopt"))
    assert info.pid == pid and info.state == ServerState.RUNNING
    assert live_pids(tmp_path) == {pid}


async def test_server_outlives_the_process_that_provisioned_it(
    provider: LocalProvider, tmp_path: Path
) -> None:
    code = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from poolctl.activities.providers.local import LocalProvider\n"
        "from poolctl.activities.providers.base import ProvisionRequest\n"
        "info = asyncio.run(LocalProvider(Path(sys.argv[1])).provision("
        "ProvisionRequest(pool='team/web', idempotency_key='other-worker')))\n"
        "print(info.pid)\n"
    )
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        check=True,
    )
    pid = int(out.stdout.strip())
    assert pid_alive(pid)  # the worker exited; its server did not
    info = await provider.provision(req("other-worker"))
    assert info.pid == pid and info.state == ServerState.RUNNING
    gone = await provider.terminate(info.server_id)  # terminating a server another process spawned
    assert gone is not None and gone.state == ServerState.TERMINATED
    assert not pid_alive(pid)


async def test_quota_and_bad_options(provider: LocalProvider) -> None:
    await provider.provision(req("q1", quota=1))
    with pytest.raises(ProviderQuotaError):
        await provider.provision(req("q2", quota=1))
    other_pool = await provider.provision(req("q3", pool="team/other", quota=1))
    assert other_pool.state == ServerState.RUNNING
    with pytest.raises(ProviderConfigError):
        await provider.provision(req("q4", colour="blue"))
    with pytest.raises(ProviderConfigError):
        await provider.provision(req("q5", command="not a list"))


async def test_command_that_exits_fails_with_provider_error(provider: LocalProvider) -> None:
    with pytest.raises(ProviderError, match="exited during start-up"):
        await provider.provision(req("bad-cmd", command=[sys.executable, "-c", "raise SystemExit(1)"]))


async def test_kill_all_local_servers(provider: LocalProvider, tmp_path: Path) -> None:
    infos = await asyncio.gather(*(provider.provision(req(f"ka/{i}")) for i in range(3)))
    assert len(live_pids(tmp_path)) == 3
    assert kill_all_local_servers(tmp_path) == 3
    assert live_pids(tmp_path) == set()
    for info in infos:
        d = await provider.describe(info.server_id)
        assert d is not None and d.state == ServerState.TERMINATED
    assert kill_all_local_servers(tmp_path) == 0


# ------------------------------------------------------------------ fake provider and registry


async def test_fake_provider_idempotent_and_failures() -> None:
    fake = FakeProvider()
    assert "fake" in (FakeProvider.__doc__ or "").lower()
    a = await fake.provision(req("f1"))
    assert a.host == "127.0.0.1" and a.port == 0 and a.state == ServerState.RUNNING
    assert (await fake.provision(req("f1"))).server_id == a.server_id
    assert len(await fake.list_servers("team/web")) == 1
    for _ in range(3):
        with pytest.raises(ProviderError):
            await fake.provision(req("f2", fail_provision=True))
    assert fake.calls["provision"] == 5
    with pytest.raises(ProviderQuotaError):
        await fake.provision(req("f3", quota=1))
    b = await fake.provision(req("f4", fail_terminate=True, pool="team/x"))
    with pytest.raises(ProviderError):
        await fake.terminate(b.server_id)
    t = await fake.terminate(a.server_id)
    assert t is not None and t.state == ServerState.TERMINATED
    assert (await fake.terminate(a.server_id)).state == ServerState.TERMINATED  # type: ignore[union-attr]
    assert await fake.terminate("nope") is None
    assert (await fake.provision(req("f1"))).state == ServerState.TERMINATED
    with pytest.raises(ProviderError):
        await fake.provision(req("f5", fail_times=1))
    assert (await fake.provision(req("f5", fail_times=1))).state == ServerState.RUNNING


async def test_registry(tmp_path: Path) -> None:
    clear_provider_cache()
    local = get_provider("local", tmp_path)
    assert isinstance(local, LocalProvider) and local.name == "local"
    assert get_provider("local", tmp_path) is local
    assert get_provider("local", tmp_path / "other") is not local
    fake = get_provider("fake", tmp_path)
    assert isinstance(fake, FakeProvider) and get_provider("fake", tmp_path) is fake
    with pytest.raises(ProviderConfigError, match="unknown provider"):
        get_provider("ec3", tmp_path)
    clear_provider_cache()


async def test_process_spawned_by_a_worker_killed_before_recording_it_is_adopted(
    provider: LocalProvider, tmp_path: Path, client: httpx.AsyncClient
):
    """The window between spawning a server and saving its pid: a retried provision must adopt the
    process the dead worker left behind, not start a second one."""
    from poolctl.localserver.processes import find_server_process

    key = "scale/t/web/1/e/0"
    sid = server_id_for(key)
    intent = {
        "server_id": sid, "provider": "local", "pool": "team/web", "idempotency_key": key, "status": "pending",
        "host": "127.0.0.1", "port": 0, "pid": None, "created_at": "2026-01-01T00:00:00+00:00", "restarts": 0,
    }  # fmt: skip
    provider.records.save(dict(intent))  # what the dead worker had written: intent, no pid
    spawned = dict(intent)
    provider._spawn(spawned, {})  # ...and the process it started, never recorded
    orphan = spawned["pid"]

    info = await provider.provision(req(key))
    assert info.pid == orphan
    assert await answers(client, info) == sid
    assert find_server_process(sid, tmp_path) == orphan
    assert live_pids(tmp_path) == {orphan}


async def test_injected_failures_fail_calls_before_anything_is_done(
    provider: LocalProvider, tmp_path: Path
) -> None:
    with pytest.raises(ProviderError, match="injected failure"):
        await provider.provision(req("fi/1", fail_ratio=1))
    assert not live_pids(tmp_path) and await provider.describe(server_id_for("fi/1")) is None
    info = await provider.provision(req("fi/2", pool="team/other", fail_ratio=0))
    assert info.state == ServerState.RUNNING


async def test_outage_window_fails_every_call_then_recovers(provider: LocalProvider) -> None:
    options = {"fail_for_s": 1.0}
    with pytest.raises(ProviderError, match="injected failure"):
        await provider.provision(req("ow/1", **options))
    started = time.monotonic()
    while True:  # the window is counted from the pool's first call
        try:
            info = await provider.provision(req("ow/1", **options))
            break
        except ProviderError:
            assert time.monotonic() - started < 10
            await asyncio.sleep(0.1)
    assert info.state == ServerState.RUNNING


async def test_terminate_is_subject_to_the_servers_fault_options(provider: LocalProvider) -> None:
    def draws_ok(key: str) -> bool:  # provision passes, the first terminate fails, the second passes
        sid = server_id_for(key)
        return draw(key, 1, "fail") >= 0.5 and draw(f"terminate/{sid}", 1, "fail") < 0.5 <= draw(
            f"terminate/{sid}", 2, "fail"
        )

    key = next(k for k in (f"tf/{i}" for i in range(1000)) if draws_ok(k))
    info = await provider.provision(req(key, fail_ratio=0.5))
    with pytest.raises(ProviderError, match="injected failure"):
        await provider.terminate(info.server_id)
    assert (await provider.describe(info.server_id)).state == ServerState.RUNNING  # type: ignore[union-attr]
    gone = await provider.terminate(info.server_id)
    assert gone is not None and gone.state == ServerState.TERMINATED


async def test_a_hanging_provision_times_out_but_creates_the_server(provider: LocalProvider) -> None:
    call = provider.provision(req("hang/1", hang_ratio=1, hang_s=30))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(call, 5)
    info = await provider.describe(server_id_for("hang/1"))
    assert info is not None and info.state == ServerState.RUNNING  # created, though the caller never heard


async def test_a_slow_boot_answers_only_after_its_delay(provider: LocalProvider) -> None:
    started = time.monotonic()
    info = await provider.provision(req("boot/1", boot_delay_s=1.5))
    assert info.state == ServerState.RUNNING and time.monotonic() - started >= 1.5
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{info.url}/health")).status_code == 200
