"""The `local` provider: each server is a real `poolctl.localserver` process on 127.0.0.1.

Its records live in `localserver.records` (files under ``{state_dir}/servers/``, one lock around every
read-modify-write); the process helpers (spawn bookkeeping, liveness, stopping a group) in
`localserver.processes`. Records are kept after termination, so the same key never yields a second server.

Idempotency and crash safety:

- ``server_id = "srv-" + sha256(idempotency_key)[:10]`` — deterministic.
- The record (intent: key -> server id, pool) is written *before* the process is spawned,
  and the pid right after, under the lock. A worker killed mid-provision and retried finds
  the record and adopts the already-spawned process (it only waits for it to be ready).
- Same key again: the same server (``RUNNING``); if it was terminated, it is returned as
  ``TERMINATED`` and nothing is started.
- **Crash**: a server whose process died without being terminated is reported by
  ``describe``/``list_servers`` as ``TERMINATED`` with ``details["crashed"] = True``; its
  record still wants it running, so provisioning the same key again **restarts it under
  the same id on a fresh port** (``details["restarts"]`` counts these).

Processes are started in a new session (``start_new_session=True``), so they outlive the
worker; terminating signals the whole process group (SIGTERM, then SIGKILL after a grace
period). Liveness is ``os.kill(pid, 0)`` plus ``/proc/{pid}/stat`` (zombie state and the
process start time, which guards against pid reuse). Children of this process are reaped.

Options (``ProvisionRequest.options``), all optional:

- ``quota`` (int): maximum live servers of the pool; more raises ``ProviderQuotaError``.
- ``command`` (list of str): argv prefix replacing ``[sys.executable, "-m", "poolctl.localserver"]``;
  ``--server-id ID --state-dir DIR --host H --port 0`` are appended. It must write the server json.
- ``startup_timeout_s`` (float, default 15): how long to wait for the server to answer.
- fault injection, for fault tests (``domain.provider_faults``): ``fail_ratio``, ``hang_ratio`` with
  ``hang_s``, ``fail_for_s`` and ``boot_delay_s``. Calls are numbered per idempotency key (provision)
  or server (terminate) in this driver; the outage window of ``fail_for_s`` starts at the pool's first
  call and is kept in ``servers/faults/{pool hash}.json``, so a restarted worker stays in the same
  window. A server remembers its pool's fault options, so terminating it is subject to them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from poolctl.activities.providers.base import (
    ProviderConfigError,
    ProviderError,
    ProviderQuotaError,
    ProvisionRequest,
    ServerInfo,
    ServerState,
)
from poolctl.domain.provider_faults import Fault, ProviderFaults, fault_for
from poolctl.domain.provider_options import provider_option_problems
from poolctl.localserver.processes import (
    find_server_process,
    kill_all_local_servers,
    pid_alive,
    proc_start_time,
    stop_process,
    track_child,
)
from poolctl.localserver.records import ServerRecords, now_text, read_json, write_json_atomic

HOST = "127.0.0.1"
DEFAULT_STARTUP_TIMEOUT_S = 15.0


def server_id_for(idempotency_key: str) -> str:
    """The deterministic server id of an idempotency key."""
    return "srv-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:10]


class LocalProvider:
    """Provider driver running each server as a real local process (see the module docstring)."""

    name = "local"

    def __init__(self, state_dir: Path, host: str = HOST):
        self.state_dir = Path(state_dir).resolve()
        self.host = host
        self.records = ServerRecords(self.state_dir)
        self.servers_dir = self.records.servers_dir
        self._fault_calls: dict[str, int] = {}  # calls per key (provision) or server (terminate)

    def _alive(self, rec: dict[str, Any]) -> bool:
        return pid_alive(rec.get("pid"), rec.get("proc_start"))

    def _info(self, rec: dict[str, Any], alive: bool | None = None) -> ServerInfo:
        if alive is None:
            alive = self._alive(rec) if rec.get("pid") else False
        status = rec["status"]
        details: dict[str, Any] = {
            "log": rec.get("log"),
            "restarts": rec.get("restarts", 0),
            "pgid": rec.get("pgid"),
        }
        if status == "terminated":
            state = ServerState.TERMINATED
            details["terminated_at"] = rec.get("terminated_at")
        elif alive:
            state = ServerState.RUNNING if status == "running" else ServerState.PENDING
        elif status == "pending" and not rec.get("pid"):
            state = ServerState.PENDING  # intent recorded, process not spawned yet
        else:
            state = ServerState.TERMINATED
            details["crashed"] = True
        return ServerInfo(
            server_id=rec["server_id"],
            provider=self.name,
            pool=rec["pool"],
            idempotency_key=rec["idempotency_key"],
            host=rec.get("host") or self.host,
            port=rec.get("port") or 0,
            state=state,
            created_at=datetime.fromisoformat(rec["created_at"]),
            pid=rec.get("pid"),
            details=details,
        )

    # ------------------------------------------------------------ provision

    @staticmethod
    def _validate_options(options: dict[str, Any]) -> ProviderFaults:
        """Check the options against domain.provider_options (ProviderConfigError naming each bad one);
        returns their fault-injection part."""
        problems = provider_option_problems("local", options)
        if problems:
            raise ProviderConfigError(
                "local provider: " + "; ".join(f"option {loc}: {msg}" for loc, msg in problems)
            )
        return ProviderFaults.model_validate(
            {k: v for k, v in options.items() if k in ProviderFaults.model_fields}
        )

    def _spawn(self, rec: dict[str, Any], options: dict[str, Any]) -> None:
        """Start the server process for `rec` (lock held). Updates rec with pid/pgid/proc_start."""
        sid = rec["server_id"]
        with contextlib.suppress(FileNotFoundError):
            self.records.runtime_path(sid).unlink()  # stale file of a previous (crashed) incarnation
        prefix = options.get("command") or [sys.executable, "-m", "poolctl.localserver"]
        argv = [*prefix, "--server-id", sid, "--state-dir", str(self.state_dir), "--host", self.host]
        argv += ["--port", "0"]
        boot_delay_s = float(options.get("boot_delay_s") or 0)
        if boot_delay_s:
            argv += ["--boot-delay-s", str(boot_delay_s)]
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        log_path = self.records.log_path(sid)
        try:
            with open(log_path, "ab") as log:
                popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=env,
                    cwd=str(self.state_dir),
                )
        except OSError as exc:
            raise ProviderError(f"local provider: cannot start {argv[0]}: {exc}") from exc
        track_child(popen)
        rec.update(
            pid=popen.pid,
            pgid=popen.pid,
            proc_start=proc_start_time(popen.pid),
            status="pending",
            port=0,
            spawned_at=now_text(),
            log=str(log_path),
            command=argv,
        )

    def _begin_provision(self, request: ProvisionRequest, sid: str) -> tuple[dict[str, Any], bool]:
        """Under the lock: find or create the record, spawn if needed. Returns (record, ready)."""
        options = request.options
        with self.records.locked():
            rec = self.records.load(sid)
            if rec is not None:
                if rec["idempotency_key"] != request.idempotency_key:
                    raise ProviderConfigError(
                        f"server id collision: {sid} belongs to another idempotency key"
                    )
                if rec["status"] == "terminated":
                    return rec, True
                if self._alive(rec):
                    return rec, rec["status"] == "running"
                orphan = find_server_process(sid, self.state_dir)
                if orphan is not None:  # spawned by a worker that died before recording it: adopt
                    rec.update(pid=orphan, pgid=os.getpgid(orphan), proc_start=proc_start_time(orphan))
                    rec["status"] = "pending"
                    self.records.save(rec)
                    return rec, False
                # crashed (or intent recorded by a worker that died before spawning): (re)start it
                if rec.get("pid"):
                    rec["restarts"] = rec.get("restarts", 0) + 1
            else:
                quota = options.get("quota")
                if quota is not None:
                    live = [
                        r
                        for r in self.records.all()
                        if r["pool"] == request.pool and r["status"] != "terminated" and self._alive(r)
                    ]
                    if len(live) >= quota:
                        raise ProviderQuotaError(
                            f"local provider: pool {request.pool} has {len(live)} live servers, quota is {quota}"
                        )
                rec = {
                    "server_id": sid,
                    "provider": self.name,
                    "pool": request.pool,
                    "idempotency_key": request.idempotency_key,
                    "status": "pending",
                    "host": self.host,
                    "port": 0,
                    "pid": None,
                    "created_at": now_text(),
                    "restarts": 0,
                    "faults": {k: v for k, v in options.items() if k in ProviderFaults.model_fields},
                }
                self.records.save(rec)  # intent first: a retry after a crash right here adopts or respawns
            self._spawn(rec, options)
            self.records.save(rec)
            return rec, False

    async def _probe(self, client: httpx.AsyncClient, port: int) -> bool:
        try:
            await client.get(f"http://{self.host}:{port}/health")
        except httpx.HTTPError:
            return False
        return True  # any answer means the server is serving (it may have been told to be unhealthy)

    async def _wait_ready(self, rec: dict[str, Any], limit_s: float) -> dict[str, Any]:
        sid = rec["server_id"]
        deadline = time.monotonic() + limit_s
        delay = 0.02
        async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
            while True:
                if not self._alive(rec):
                    current = await asyncio.to_thread(self.records.load, sid)
                    if current is not None and current["status"] == "terminated":
                        return current  # terminated while we waited
                    raise ProviderError(
                        f"local server {sid} exited during start-up; see {rec.get('log')}: "
                        + _tail(rec.get("log"))
                    )
                runtime = self.records.runtime(sid)
                if runtime is not None and runtime.get("pgid") == rec.get("pgid"):
                    port = int(runtime["port"])
                    if await self._probe(client, port):
                        return await asyncio.to_thread(self._mark_running, sid, rec.get("pid"), runtime)
                if time.monotonic() >= deadline:
                    raise ProviderError(f"local server {sid} did not answer within {limit_s:.0f}s")
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, 0.25)

    def _mark_running(self, sid: str, pid: int | None, runtime: dict[str, Any]) -> dict[str, Any]:
        with self.records.locked():
            rec = self.records.load(sid)
            if rec is None:
                raise ProviderError(f"local provider: record of {sid} vanished")
            if rec["status"] == "terminated" or rec.get("pid") != pid:
                return rec
            rec.update(status="running", host=runtime.get("host", self.host), port=int(runtime["port"]))
            rec["started_at"] = runtime.get("started_at") or now_text()
            self.records.save(rec)
            return rec

    async def provision(self, request: ProvisionRequest) -> ServerInfo:
        faults = self._validate_options(request.options)
        fault = await self._injected_fault(faults, request.pool, request.idempotency_key)
        sid = server_id_for(request.idempotency_key)
        rec, ready = await asyncio.to_thread(self._begin_provision, request, sid)
        if not ready:
            limit_s = float(request.options.get("startup_timeout_s") or DEFAULT_STARTUP_TIMEOUT_S)
            rec = await self._wait_ready(rec, limit_s)
        if fault is Fault.HANG:  # the server exists, but the caller hears nothing in time
            await asyncio.sleep(faults.hang_s)
        return self._info(rec)

    # ------------------------------------------------------------ fault injection

    def _window_started_at(self, pool: str) -> float:
        """Epoch seconds of the pool's first faulty call (recorded on first use, kept across restarts)."""
        path = self.servers_dir / "faults" / (hashlib.sha256(pool.encode()).hexdigest()[:16] + ".json")
        with self.records.locked():
            data = read_json(path)
            if data is None:
                path.parent.mkdir(exist_ok=True)
                data = {"pool": pool, "first_call_at": time.time()}
                write_json_atomic(path, data)
            return float(data["first_call_at"])

    async def _injected_fault(self, faults: ProviderFaults, pool: str, key: str) -> Fault:
        """The fault of this call (domain.provider_faults); raises the injected failure itself."""
        if not faults.any:
            return Fault.NONE
        call = self._fault_calls[key] = self._fault_calls.get(key, 0) + 1
        started = await asyncio.to_thread(self._window_started_at, pool)
        fault = fault_for(faults, key=key, call=call, elapsed_s=time.time() - started)
        if fault is Fault.FAIL:
            raise ProviderError(f"local provider: injected failure (call {call} of {key})")
        return fault

    # ------------------------------------------------------------ terminate / describe / list

    def _terminate_blocking(self, server_id: str) -> dict[str, Any] | None:
        with self.records.locked():
            rec = self.records.load(server_id)
            if rec is None:
                return None
            if rec["status"] == "terminated" and not self._alive(rec):
                return rec
            # mark first: a concurrent provision of the same key now returns TERMINATED
            if rec["status"] != "terminated":
                rec["status"] = "terminated"
                rec["terminated_at"] = now_text()
                self.records.save(rec)
        if rec.get("pid"):
            stop_process(rec["pid"], rec.get("pgid"), rec.get("proc_start"))
        with contextlib.suppress(FileNotFoundError):
            runtime = self.records.runtime(server_id)
            if runtime is not None and runtime.get("pgid") == rec.get("pgid"):
                self.records.runtime_path(server_id).unlink()
        return rec

    async def terminate(self, server_id: str) -> ServerInfo | None:
        known = await asyncio.to_thread(self.records.load, server_id)
        fault, faults = Fault.NONE, ProviderFaults()
        if known is not None and known.get("faults") and known["status"] != "terminated":
            faults = ProviderFaults.model_validate(known["faults"])
            fault = await self._injected_fault(faults, known["pool"], f"terminate/{server_id}")
        rec = await asyncio.to_thread(self._terminate_blocking, server_id)
        if fault is Fault.HANG:
            await asyncio.sleep(faults.hang_s)
        return None if rec is None else self._info(rec, alive=False)

    async def describe(self, server_id: str) -> ServerInfo | None:
        rec = await asyncio.to_thread(self.records.load, server_id)
        return None if rec is None else self._info(rec)

    async def list_servers(self, pool: str | None = None) -> list[ServerInfo]:
        recs = await asyncio.to_thread(self.records.all)
        return [self._info(r) for r in recs if pool is None or r["pool"] == pool]

    # ------------------------------------------------------------ housekeeping

    def kill_all(self) -> int:
        """Stop every local server process under this state dir (records marked terminated). Blocking."""
        return kill_all_local_servers(self.state_dir)


def _tail(log: str | None, n: int = 400) -> str:
    if not log:
        return ""
    try:
        data = Path(log).read_bytes()[-n:]
    except OSError:
        return ""
    return data.decode(errors="replace").strip()
