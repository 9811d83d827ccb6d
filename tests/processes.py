"""Test helpers for real processes: a `poolctl worker` subprocess, and the local-server processes a test
started (found through /proc by their state dir)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from poolctl.settings import Settings


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        POOLCTL_STATE_DIR=str(settings.state_dir),
        POOLCTL_DATABASE_URL=settings.resolved_database_url,
        POOLCTL_TEMPORAL_ADDRESS=settings.temporal_address,
        POOLCTL_TASK_QUEUE=settings.task_queue,
        POOLCTL_WORKER_METRICS_PORT="0",
        POOLCTL_RECONCILE_INTERVAL_S=str(settings.reconcile_interval_s),
        POOLCTL_RETRY_INITIAL_INTERVAL_S=str(settings.retry_initial_interval_s),
        POOLCTL_ACTIVITY_TIMEOUT_S=str(settings.activity_timeout_s),
    )
    env.update(extra)
    return env


def start_worker_process(settings: Settings, log_path: Path, **extra_env: str) -> subprocess.Popen:
    """A `poolctl worker` process on the test's task queue, database and state dir."""
    log = open(log_path, "ab")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen(
        [sys.executable, "-m", "poolctl.worker"],
        env=worker_env(settings, **extra_env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def local_server_pids(settings: Settings) -> set[int]:
    """Every live local-server process started under this test's state dir (found via /proc)."""
    pids = set()
    marker = str(settings.state_dir).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().split(")")[-1].split()[0]
        except OSError:
            continue
        if b"poolctl.localserver" in cmd and marker in cmd and state != "Z":
            pids.add(int(entry))
    return pids
