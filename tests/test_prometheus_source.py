"""The `prometheus` metric source against a REAL Prometheus (Debian's package, installed by
scripts/install-system-deps.sh) scraping a real local server whose CPU the test pins."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from poolctl.activities.metrics import read_metric
from poolctl.domain.evaluation import PolicyState, evaluate_policy
from poolctl.domain.policy_spec import PolicySpec, PrometheusSource
from tests.backends import free_port
from tests.helpers import eventually

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(PROMETHEUS).exists(), reason="prometheus is not installed (make system-deps)"
    ),
]


async def _wait_for(path: Path, limit_s: float = 20) -> dict:
    deadline = time.monotonic() + limit_s
    while not path.exists():  # noqa: ASYNC240 - a stat while waiting
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear")
        await asyncio.sleep(0.1)
    return json.loads(path.read_text())  # noqa: ASYNC240


async def test_prometheus_source_reads_a_real_prometheus_scraping_local_servers(tmp_path: Path):
    server = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited
        [sys.executable, "-m", "poolctl.localserver", "--server-id", "prom-a", "--state-dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    prom = None
    try:
        info = await _wait_for(tmp_path / "servers" / "prom-a.json")
        target = f"127.0.0.1:{info['port']}"
        async with httpx.AsyncClient() as http:
            r = await http.post(f"http://{target}/admin/load", json={"cpu_percent": 73})
            assert r.status_code == 200
            port = free_port()
            config = tmp_path / "prometheus.yml"
            config.write_text(
                "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                "scrape_configs:\n"
                f"  - job_name: pool\n    static_configs: [{{targets: ['{target}']}}]\n"
            )
            prom = subprocess.Popen(  # noqa: ASYNC220
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            url = f"http://127.0.0.1:{port}"
            source = PrometheusSource(kind="prometheus", url=url, query='avg(cpu_percent{job="pool"})')

            async def up() -> float | None:
                try:
                    return await read_metric(
                        PrometheusSource(kind="prometheus", url=url, query='up{job="pool"}'), [], http
                    )
                except Exception:  # noqa: BLE001 - not ready yet
                    return None

            await eventually(up, lambda v: v == 1.0, timeout=30, interval=0.3)
            value = await eventually(lambda: read_metric(source, [], http), lambda v: v == 73.0, timeout=15)
            # and the decision the live loop would make from it
            spec = PolicySpec.model_validate(
                {"name": "prom", "type": "custom", "source": source.model_dump(), "target": 50}
            )
            decision, _ = evaluate_policy(
                spec, current=2, metric=value, now=datetime.now(UTC), state=PolicyState()
            )
            assert decision.desired == 3 and decision.reason.value == "TargetTracking"
            # a query matching nothing is "unavailable", with the reason
            from poolctl.activities.metrics import MetricUnavailableError

            with pytest.raises(MetricUnavailableError, match="no sample"):
                await read_metric(
                    PrometheusSource(kind="prometheus", url=url, query="cpu_percent{job='nope'}"), [], http
                )
    finally:
        for p in (prom, server):
            if p is not None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
