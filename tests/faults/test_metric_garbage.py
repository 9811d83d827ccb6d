"""Faults: a live policy's metric endpoint (a real HTTP server) goes down or answers garbage — NaN, a
negative number, a string, an empty result, an answer slower than the source's timeout. The invariant:
no scale-in while the data is bad, each evaluation recorded as `MetricUnavailable` with the cause, and
scaling resumes as soon as good data returns. Real dev server, real local servers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from temporalio.client import Client

from poolctl.settings import Settings
from tests.faults.conftest import assert_invariants
from tests.helpers import apply_yaml, eventually, pool_view, settled
from tests.policy_helpers import events, policy_state

pytestmark = [pytest.mark.temporal, pytest.mark.slow]

GARBAGE = {
    # mode: (the JSON document served, or None to hang past the timeout; what the recorded cause says)
    "NaN": ('{"v": NaN}', "nan"),
    "negative": ('{"v": -5}', "negative"),
    "a string": ('{"v": "n/a"}', "could not convert"),
    "an empty result": ("{}", "no key at 'v'"),
    "a timeout": (None, "Timeout"),
}


@contextlib.asynccontextmanager
async def switchable_metric() -> AsyncIterator[tuple[int, dict[str, str | None]]]:
    """A real HTTP endpoint serving `state["body"]` as JSON, or hanging when it is None; yields its port."""
    state: dict[str, str | None] = {"body": '{"v": 50}'}

    async def answer(request: web.Request) -> web.Response:
        body = state["body"]
        if body is None:
            await asyncio.sleep(30)  # longer than the source's timeout_s
            body = "{}"
        return web.Response(text=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/load", answer)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1], state  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


def unavailable_because(cause: str):  # type: ignore[no-untyped-def]
    """A condition on a policy's state: its last evaluation found the metric unavailable, for `cause`."""
    return lambda s: s is not None and s.last_reason == "MetricUnavailable" and cause in (s.last_error or "")


def spec(port: int) -> str:
    return f"""
pools:
  - name: web
    min_servers: 1
    max_servers: 6
    desired_servers: 3
    policies:
      - name: load
        type: custom
        source: {{kind: http_json, url: "http://127.0.0.1:{port}/load", path: v, timeout_s: 1}}
        target: 50
        evaluation_interval: 1
        stabilization_window_s: 0
"""


async def test_metric_garbage_never_scales_in_and_scaling_resumes_when_data_returns(
    client: Client, settings: Settings, worker, fault_record
):
    async with switchable_metric() as (port, metric):
        await apply_yaml(client, settings, spec(port))
        await settled(client, settings, "web", 3, timeout=120)  # 50 against target 50: hold at 3
        for name, (body, cause) in GARBAGE.items():
            metric["body"] = body
            seen = await eventually(
                lambda: policy_state(client, settings, "web", "load"), unavailable_because(cause), timeout=60
            )
            assert seen is not None
            # it stays so for further evaluations, and the pool holds its size
            await eventually(
                lambda: policy_state(client, settings, "web", "load"),
                lambda s, n=seen.evaluations: s is not None and s.evaluations >= n + 2,  # type: ignore[misc]
                timeout=60,
            )
            after = await policy_state(client, settings, "web", "load")
            assert after is not None and after.last_reason == "MetricUnavailable"
            view = await pool_view(client, settings, "web")
            assert view is not None and (view.desired, view.current) == (3, 3)
            assert all(e.direction != "down" for e in events(settings, "web"))
            await assert_invariants(
                client, settings, "web", 3, f"metric source answers {name}: no scale-in", fault_record
            )
        # good data again, and low: the policy scales in at once (desired = ceil(3 * 10 / 50) = 1)
        metric["body"] = '{"v": 10}'
        await settled(client, settings, "web", 1, timeout=120)
        assert [e.direction for e in events(settings, "web")].count("down") == 1
        await assert_invariants(
            client, settings, "web", 1, "metric data returns after garbage: scaling resumes", fault_record
        )
