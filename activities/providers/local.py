"""The `local` provider: each server is a real `poolctl.localserver` process on 127.0.0.1.

Files, all under ``{state_dir}/servers/``:

- ``records/{server_id}.json`` — the provider's record of a server (pool, idempotency key,
  status ``pending`` / ``running`` / ``terminated``, pid, pgid, port, ...). Records are kept
  after termination, so the same key never yields a second server.
- ``{server_id}.json`` — written by the server process itself once it listens (pid, port, ...).
- ``{server_id}.log`` — the server's stdout/stderr.
- ``.lock`` — an ``flock`` lock taken around every read-modify-write of the records, so
  concurrent calls from several activities, threads or worker processes are safe.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
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

HOST = "127.0.0.1"
DEFAULT_STARTUP_TIMEOUT_S = 15.0
TERMINATE_GRACE_S = 5.0
KNOWN_OPTIONS = {"quota", "command", "startup_timeout_s"}

# Popen objects of the processes this process spawned, by pid, so they can be reaped
# (kept module-wide: every LocalProvider instance in a process shares them).
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


def server_id_for(idempotency_key: str) -> str:
    """The deterministic server id of an idempotency key."""
    return "srv-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:10]


def _now() -> str:
    return datetime.now(UTC).isoformat()


# ---------------------------------------------------------------- process helpers


def proc_start_time(pid: int) -> int | None:
    """The start time of a process (clock ticks since boot, from /proc), or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 of stat; fields here start at field 3
    except (IndexError, ValueError):
        return None


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()[0]


def find_server_process(server_id: str, state_dir: Path) -> int | None:
    """The pid of a live local-server process started for `server_id` under `state_dir`, found through
    /proc. A worker killed between spawning a server and recording its pid leaves such a process behind;
    the retried provision adopts it instead of starting a second one."""
    wanted = [b"poolctl.localserver", b"--server-id\0" + server_id.encode() + b"\0", str(state_dir).encode()]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if all(w in cmdline for w in wanted) and pid_alive(int(entry)):
            return int(entry)
    return None


def reap(pid: int) -> None:
    """Collect the exit status of `pid` if it is our child and has exited (no zombie left behind)."""
    with _children_lock:
        popen = _children.get(pid)
        if popen is not None:
            if popen.poll() is not None:
                del _children[pid]
            return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int | None, start: int | None = None) -> bool:
    """Is `pid` a live (non-zombie) process, and the same one that started at `start` if given?"""
    if not pid or pid <= 0:
        return False
    reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if _proc_state(pid) in ("Z", "X"):
        return False
    if start is not None:
        current = proc_start_time(pid)
        if current is not None and current != start:
            return False  # pid reused by another process
    return True


def _signal(pid: int, pgid: int | None, sig: int) -> None:
    """Signal the process group `pgid` (a server runs in its own session), or only `pid` when the
    group is unknown or is our own (a server started without a new session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if pgid and pgid > 1 and pgid != os.getpgid(0):
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)


def stop_process(pid: int, pgid: int | None, start: int | None, grace_s: float = TERMINATE_GRACE_S) -> bool:
    """SIGTERM the process group, wait up to `grace_s`, then SIGKILL. Blocking. True if it was alive."""
    if not pid_alive(pid, start):
        return False
    _signal(pid, pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not pid_alive(pid, start):
            break
        time.sleep(0.02)
    else:
        _signal(pid, pgid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while pid_alive(pid, start) and time.monotonic() < deadline:
            time.sleep(0.02)
    reap(pid)
    return True


# ---------------------------------------------------------------- files


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class LocalProvider:
    """Provider driver running each server as a real local process (see the module docstring)."""

    name = "local"

    def __init__(self, state_dir: Path, host: str = HOST):
        self.state_dir = Path(state_dir).resolve()
        self.host = host
        self.servers_dir = self.state_dir / "servers"
        self.records_dir = self.servers_dir / "records"
        self.records_dir.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.servers_dir / ".lock"

    # ------------------------------------------------------------ locking and records

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _record_path(self, server_id: str) -> Path:
        return self.records_dir / f"{server_id}.json"

    def _runtime_path(self, server_id: str) -> Path:
        return self.servers_dir / f"{server_id}.json"

    def _load(self, server_id: str) -> dict[str, Any] | None:
        return _read_json(self._record_path(server_id))

    def _save(self, rec: dict[str, Any]) -> None:
        _write_json_atomic(self._record_path(rec["server_id"]), rec)

    def _all_records(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.records_dir.glob("*.json")):
            rec = _read_json(path)
            if rec is not None:
                out.append(rec)
        return out

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
    def _validate_options(options: dict[str, Any]) -> None:
        unknown = set(options) - KNOWN_OPTIONS
        if unknown:
            raise ProviderConfigError(
                f"local provider: unknown option(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(KNOWN_OPTIONS))}"
            )
        quota = options.get("quota")
        if quota is not None and (isinstance(quota, bool) or not isinstance(quota, int) or quota < 0):
            raise ProviderConfigError("local provider: option quota must be a non-negative integer")
        command = options.get("command")
        if command is not None and (
            not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command)
        ):
            raise ProviderConfigError("local provider: option command must be a non-empty list of strings")
        timeout = options.get("startup_timeout_s")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise ProviderConfigError("local provider: option startup_timeout_s must be a positive number")

    def _spawn(self, rec: dict[str, Any], options: dict[str, Any]) -> None:
        """Start the server process for `rec` (lock held). Updates rec with pid/pgid/proc_start."""
        sid = rec["server_id"]
        with contextlib.suppress(FileNotFoundError):
            self._runtime_path(sid).unlink()  # stale file of a previous (crashed) incarnation
        prefix = options.get("command") or [sys.executable, "-m", "poolctl.localserver"]
        argv = [*prefix, "--server-id", sid, "--state-dir", str(self.state_dir), "--host", self.host]
        argv += ["--port", "0"]
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        log_path = self.servers_dir / f"{sid}.log"
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
        with _children_lock:
            _children[popen.pid] = popen
        rec.update(
            pid=popen.pid,
            pgid=popen.pid,
            proc_start=proc_start_time(popen.pid),
            status="pending",
            port=0,
            spawned_at=_now(),
            log=str(log_path),
            command=argv,
        )

    def _begin_provision(self, request: ProvisionRequest, sid: str) -> tuple[dict[str, Any], bool]:
        """Under the lock: find or create the record, spawn if needed. Returns (record, ready)."""
        options = request.options
        with self._locked():
            rec = self._load(sid)
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
                    self._save(rec)
                    return rec, False
                # crashed (or intent recorded by a worker that died before spawning): (re)start it
                if rec.get("pid"):
                    rec["restarts"] = rec.get("restarts", 0) + 1
            else:
                quota = options.get("quota")
                if quota is not None:
                    live = [
                        r
                        for r in self._all_records()
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
                    "created_at": _now(),
                    "restarts": 0,
                }
                self._save(rec)  # intent first: a retry after a crash right here adopts or respawns
            self._spawn(rec, options)
            self._save(rec)
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
                    current = await asyncio.to_thread(self._load, sid)
                    if current is not None and current["status"] == "terminated":
                        return current  # terminated while we waited
                    raise ProviderError(
                        f"local server {sid} exited during start-up; see {rec.get('log')}: "
                        + _tail(rec.get("log"))
                    )
                runtime = _read_json(self._runtime_path(sid))
                if runtime is not None and runtime.get("pgid") == rec.get("pgid"):
                    port = int(runtime["port"])
                    if await self._probe(client, port):
                        return await asyncio.to_thread(self._mark_running, sid, rec.get("pid"), runtime)
                if time.monotonic() >= deadline:
                    raise ProviderError(f"local server {sid} did not answer within {limit_s:.0f}s")
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, 0.25)

    def _mark_running(self, sid: str, pid: int | None, runtime: dict[str, Any]) -> dict[str, Any]:
        with self._locked():
            rec = self._load(sid)
            if rec is None:
                raise ProviderError(f"local provider: record of {sid} vanished")
            if rec["status"] == "terminated" or rec.get("pid") != pid:
                return rec
            rec.update(status="running", host=runtime.get("host", self.host), port=int(runtime["port"]))
            rec["started_at"] = runtime.get("started_at") or _now()
            self._save(rec)
            return rec

    async def provision(self, request: ProvisionRequest) -> ServerInfo:
        self._validate_options(request.options)
        sid = server_id_for(request.idempotency_key)
        rec, ready = await asyncio.to_thread(self._begin_provision, request, sid)
        if not ready:
            limit_s = float(request.options.get("startup_timeout_s") or DEFAULT_STARTUP_TIMEOUT_S)
            rec = await self._wait_ready(rec, limit_s)
        return self._info(rec)

    # ------------------------------------------------------------ terminate / describe / list

    def _terminate_blocking(self, server_id: str) -> dict[str, Any] | None:
        with self._locked():
            rec = self._load(server_id)
            if rec is None:
                return None
            if rec["status"] == "terminated" and not self._alive(rec):
                return rec
            # mark first: a concurrent provision of the same key now returns TERMINATED
            if rec["status"] != "terminated":
                rec["status"] = "terminated"
                rec["terminated_at"] = _now()
                self._save(rec)
        if rec.get("pid"):
            stop_process(rec["pid"], rec.get("pgid"), rec.get("proc_start"))
        with contextlib.suppress(FileNotFoundError):
            runtime = _read_json(self._runtime_path(server_id))
            if runtime is not None and runtime.get("pgid") == rec.get("pgid"):
                self._runtime_path(server_id).unlink()
        return rec

    async def terminate(self, server_id: str) -> ServerInfo | None:
        rec = await asyncio.to_thread(self._terminate_blocking, server_id)
        return None if rec is None else self._info(rec, alive=False)

    async def describe(self, server_id: str) -> ServerInfo | None:
        rec = await asyncio.to_thread(self._load, server_id)
        return None if rec is None else self._info(rec)

    async def list_servers(self, pool: str | None = None) -> list[ServerInfo]:
        recs = await asyncio.to_thread(self._all_records)
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


def kill_all_local_servers(state_dir: Path, grace_s: float = 3.0) -> int:
    """Stop every local server process of `state_dir` — provider-managed ones (their records are
    marked terminated) and any process that wrote a ``servers/*.json`` (e.g. a benchmark's
    multi-port server). Blocking; safe to call when nothing runs. Returns how many were stopped."""
    servers_dir = Path(state_dir).resolve() / "servers"
    if not servers_dir.is_dir():
        return 0
    records_dir = servers_dir / "records"
    records_dir.mkdir(parents=True, exist_ok=True)
    targets: dict[int, tuple[int | None, int | None]] = {}  # pid -> (pgid, proc_start)
    lock_path = servers_dir / ".lock"
    with open(lock_path, "a+") as lf:
        fcntl.flock(lf.fileno(), fcntl.LOCK_EX)
        try:
            for path in sorted(records_dir.glob("*.json")):
                rec = _read_json(path)
                if rec is None:
                    continue
                if rec.get("pid"):
                    targets[rec["pid"]] = (rec.get("pgid"), rec.get("proc_start"))
                if rec.get("status") != "terminated":
                    rec["status"] = "terminated"
                    rec["terminated_at"] = _now()
                    _write_json_atomic(path, rec)
        finally:
            fcntl.flock(lf.fileno(), fcntl.LOCK_UN)
    for path in sorted(servers_dir.glob("*.json")):
        runtime = _read_json(path)
        if runtime and isinstance(runtime.get("pid"), int) and runtime["pid"] not in targets:
            targets[runtime["pid"]] = (runtime.get("pgid"), None)
    stopped = 0
    for pid, (pgid, start) in targets.items():
        if pgid and pgid != pid and not pid_alive(pgid):
            pgid = None  # never signal a group whose leader is gone (its id may be reused)
        if pid == os.getpid():
            continue
        if stop_process(pid, pgid, start, grace_s=grace_s):
            stopped += 1
    for path in servers_dir.glob("*.json"):
        runtime = _read_json(path)
        if runtime and isinstance(runtime.get("pid"), int) and not pid_alive(runtime["pid"]):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return stopped
