"""Local server processes on this machine: liveness through /proc (guarding against pid reuse), stopping
a process group, and stopping every local server of a state dir (`poolctl dev
down --purge`, test teardown). Shared by the `local` provider driver and the dev stack."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from poolctl.localserver.records import ServerRecords, now_text

TERMINATE_GRACE_S = 5.0

# Popen objects of the processes this process spawned, by pid, so they can be reaped
# (kept module-wide: every LocalProvider instance in a process shares them).
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


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


def track_child(popen: subprocess.Popen[bytes]) -> None:
    """Remember a process this process spawned, so `reap` can collect its exit status later."""
    with _children_lock:
        _children[popen.pid] = popen


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


def kill_all_local_servers(state_dir: Path, grace_s: float = 3.0) -> int:
    """Stop every local server process of `state_dir` — provider-managed ones (their records are
    marked terminated) and any process that wrote a ``servers/*.json`` (e.g. a benchmark's
    multi-port server). Blocking; safe to call when nothing runs. Returns how many were stopped."""
    if not (Path(state_dir).resolve() / "servers").is_dir():
        return 0
    records = ServerRecords(state_dir)
    targets: dict[int, tuple[int | None, int | None]] = {}  # pid -> (pgid, proc_start)
    with records.locked():
        for rec in records.all():
            if rec.get("pid"):
                targets[rec["pid"]] = (rec.get("pgid"), rec.get("proc_start"))
            if rec.get("status") != "terminated":
                rec["status"] = "terminated"
                rec["terminated_at"] = now_text()
                records.save(rec)
    for _path, runtime in records.runtime_files():
        if isinstance(runtime.get("pid"), int) and runtime["pid"] not in targets:
            targets[runtime["pid"]] = (runtime.get("pgid"), None)
    stopped = 0
    for pid, (pgid, start) in targets.items():
        if pgid and pgid != pid and not pid_alive(pgid):
            pgid = None  # never signal a group whose leader is gone (its id may be reused)
        if pid == os.getpid():
            continue
        if stop_process(pid, pgid, start, grace_s=grace_s):
            stopped += 1
    for path, runtime in records.runtime_files():
        if isinstance(runtime.get("pid"), int) and not pid_alive(runtime["pid"]):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return stopped
