"""The worker's Prometheus endpoint: a real `poolctl worker` process against the session's dev server
serves poolctl's counters and the SDK's runtime metrics on one page, and the counters move."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client

from poolctl.settings import Settings
from tests.backends import free_port
from tests.helpers import apply_yaml, eventually, settled

pytestmark = pytest.mark.temporal

SPEC = """
pools:
  - name: web
    provider: fake
    min_servers: 0
    max_servers: 5
    desired_servers: 2
"""


def samples(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


async def test_worker_serves_poolctl_counters_and_sdk_metrics(client: Client, settings: Settings) -> None:
    port = free_port()
    env = {
        **os.environ,
        "POOLCTL_STATE_DIR": str(settings.state_dir),
        "POOLCTL_DATABASE_URL": settings.resolved_database_url,
        "POOLCTL_TEMPORAL_ADDRESS": settings.temporal_address,
        "POOLCTL_TASK_QUEUE": settings.task_queue,
        "POOLCTL_WORKER_METRICS_PORT": str(port),
        "POOLCTL_RECONCILE_INTERVAL_S": "2",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "poolctl.starter.cli", "worker", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient() as http:

            async def page() -> dict[str, float] | None:
                try:
                    r = await http.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
                except httpx.HTTPError:
                    return None
                return samples(r.text) if r.status_code == 200 else None

            before = await eventually(page, lambda p: p is not None, timeout=60)
            assert before is not None
            assert any(k.startswith("temporal_") for k in before), "no SDK runtime metrics on the page"
            await apply_yaml(client, settings, SPEC)
            await settled(client, settings, "web", 2)
            after = await eventually(
                page,
                lambda p: p is not None and p.get("poolctl_scaling_actions_total{outcome=succeeded}", 0) >= 1,
                timeout=60,
            )
            assert after is not None
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
