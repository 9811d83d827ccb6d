"""The record store of local servers: the files under ``{state_dir}/servers/`` and the lock around them.

Layout (shared by the `local` provider driver, the server processes themselves and the dev stack):

- ``records/{server_id}.json`` — the provider's record of a server (pool, idempotency key, status
  ``pending`` / ``running`` / ``terminated``, pid, pgid, port, ...). Kept after termination.
- ``{server_id}.json`` — the runtime file a server process writes once it listens (pid, port, ...).
- ``{server_id}.log`` — the server's stdout/stderr.
- ``.lock`` — an ``flock`` lock taken around every read-modify-write of the records, so concurrent
  calls from several activities, threads or worker processes are safe.

Writes are atomic (write to a temporary file, fsync, rename). Nothing here starts or stops a process:
that is `localserver.processes`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def now_text() -> str:
    """The current time as ISO 8601 UTC text (the records' timestamp format)."""
    return datetime.now(UTC).isoformat()


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None if it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write `data` to `path` so a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ServerRecords:
    """The records of one state dir's local servers (see the module docstring for the files)."""

    def __init__(self, state_dir: Path) -> None:
        self.servers_dir = Path(state_dir).resolve() / "servers"
        self.records_dir = self.servers_dir / "records"
        self.records_dir.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.servers_dir / ".lock"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the records' lock (an exclusive `flock`, shared with every process on this state dir)."""
        with open(self._lock_path, "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def record_path(self, server_id: str) -> Path:
        return self.records_dir / f"{server_id}.json"

    def runtime_path(self, server_id: str) -> Path:
        """The file the server process writes once it listens."""
        return self.servers_dir / f"{server_id}.json"

    def log_path(self, server_id: str) -> Path:
        return self.servers_dir / f"{server_id}.log"

    def load(self, server_id: str) -> dict[str, Any] | None:
        return read_json(self.record_path(server_id))

    def save(self, rec: dict[str, Any]) -> None:
        write_json_atomic(self.record_path(rec["server_id"]), rec)

    def all(self) -> list[dict[str, Any]]:
        """Every record, in server-id order (unreadable files skipped)."""
        out = []
        for path in sorted(self.records_dir.glob("*.json")):
            rec = read_json(path)
            if rec is not None:
                out.append(rec)
        return out

    def runtime(self, server_id: str) -> dict[str, Any] | None:
        return read_json(self.runtime_path(server_id))

    def runtime_files(self) -> list[tuple[Path, dict[str, Any]]]:
        """Every readable runtime file (path, content): servers the provider started and any other
        process that wrote one (a benchmark's multi-port server)."""
        out = []
        for path in sorted(self.servers_dir.glob("*.json")):
            runtime = read_json(path)
            if runtime is not None:
                out.append((path, runtime))
        return out
