"""Metric source drivers against real local HTTP servers started by the test (aiohttp)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from aiohttp import web

from poolctl.activities.metrics import MetricUnavailableError, read_metric
from poolctl.activities.metrics.scrape import parse_prometheus_text
from poolctl.domain.policy_spec import HttpJsonSource, PolicySpec, PrometheusSource, ScrapeSource

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _serve(routes: dict[str, Handler]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def _metrics_handler(cpu: float, mem: float) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        text = (
            "# HELP cpu_percent Simulated CPU utilisation in percent.\n# TYPE cpu_percent gauge\n"
            f"cpu_percent {cpu:.3f}\n# TYPE memory_percent gauge\nmemory_percent {mem:.3f}\n"
        )
        return web.Response(text=text, content_type="text/plain")

    return handler


@pytest.fixture
async def servers() -> AsyncIterator[list[str]]:
    runners, urls = [], []
    for cpu, mem in ((20.0, 40.0), (60.0, 50.0), (70.0, 60.0)):
        runner, url = await _serve({"/metrics": _metrics_handler(cpu, mem)})
        runners.append(runner)
        urls.append(url)
    yield urls
    for r in runners:
        await r.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


async def test_scrape_averages_over_servers(servers: list[str], client: httpx.AsyncClient) -> None:
    spec = PolicySpec(name="cpu", target=50)
    assert isinstance(spec.source, ScrapeSource)
    assert await read_metric(spec.source, servers, client) == pytest.approx(50.0)
    mem = ScrapeSource(metric="memory_percent", aggregate="max")
    assert await read_metric(mem, servers, client) == pytest.approx(60.0)


async def test_scrape_fails_when_a_server_is_down(servers: list[str], client: httpx.AsyncClient) -> None:
    runner, dead = await _serve({})
    await runner.cleanup()  # nothing listens there any more
    with pytest.raises(MetricUnavailableError, match="1 of 4 servers did not answer"):
        await read_metric(ScrapeSource(metric="cpu_percent"), [*servers, dead], client)
    with pytest.raises(MetricUnavailableError, match="no sample of 'nope'"):
        await read_metric(ScrapeSource(metric="nope"), servers, client)
    with pytest.raises(MetricUnavailableError, match="no servers"):
        await read_metric(ScrapeSource(metric="cpu_percent"), [], client)


def test_parse_prometheus_text_labels_and_timestamps() -> None:
    text = 'x{a="1"} 2 1700000000000\nx{a="2"} 3\ny 9\n# x 100\n'
    assert parse_prometheus_text(text, "x") == 5
    assert parse_prometheus_text(text, "z") is None


def test_parse_prometheus_text_reads_quoted_label_values_a_regex_missed() -> None:
    """A '}' or an escaped quote inside a label value is still one sample (prometheus-client's parser)."""
    assert parse_prometheus_text('cpu_percent{a="}"} 5\n', "cpu_percent") == 5
    assert parse_prometheus_text('cpu_percent{a="\\"}"} 2\ncpu_percent 3\n', "cpu_percent") == 5
    # a page that does not parse gives no value at all (Prometheus fails the whole scrape)
    assert parse_prometheus_text("cpu_percent 5\ngarbage here\n", "cpu_percent") is None


async def test_prometheus_query_stub_prometheus(client: httpx.AsyncClient) -> None:
    """A server of our own answering `/api/v1/query` the way Prometheus does (not a real Prometheus)."""

    async def query(request: web.Request) -> web.Response:
        q = request.query.get("query", "")
        body: dict[str, Any]
        if q == "avg(cpu_percent)":
            body = {
                "status": "success",
                "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1700000000.1, "42.5"]}]},
            }
        elif q == "empty":
            body = {"status": "success", "data": {"resultType": "vector", "result": []}}
        elif q == "many":
            sample = {"metric": {}, "value": [1, "1"]}
            body = {"status": "success", "data": {"resultType": "vector", "result": [sample, sample]}}
        elif q == "scalar(1)":
            body = {"status": "success", "data": {"resultType": "scalar", "result": [1700000000, "1"]}}
        else:
            return web.json_response(
                {"status": "error", "errorType": "bad_data", "error": "parse error"}, status=400
            )
        return web.json_response(body)

    runner, url = await _serve({"/api/v1/query": query})
    try:
        src = PrometheusSource(kind="prometheus", url=url, query="avg(cpu_percent)")
        assert await read_metric(src, [], client) == 42.5
        assert await read_metric(src.model_copy(update={"query": "scalar(1)"}), [], client) == 1.0
        for q, msg in (("empty", "empty vector"), ("many", "2 series"), ("bad{", "bad_data")):
            with pytest.raises(MetricUnavailableError, match=msg):
                await read_metric(src.model_copy(update={"query": q}), [], client)
    finally:
        await runner.cleanup()
    with pytest.raises(MetricUnavailableError, match="request to"):
        await read_metric(src, [], client)


async def test_http_json_path(client: httpx.AsyncClient) -> None:
    async def doc(request: web.Request) -> web.Response:
        return web.json_response({"data": {"value": 7.5, "items": [{"load": "3"}], "text": "n/a"}})

    runner, url = await _serve({"/stats": doc})
    try:
        src = HttpJsonSource(kind="http_json", url=url + "/stats", path="data.value")
        assert await read_metric(src, [], client) == 7.5
        assert await read_metric(src.model_copy(update={"path": "data.items.0.load"}), [], client) == 3.0
        with pytest.raises(MetricUnavailableError, match="no key at 'data.missing'"):
            await read_metric(src.model_copy(update={"path": "data.missing"}), [], client)
        with pytest.raises(MetricUnavailableError, match="could not convert|not a number"):
            await read_metric(src.model_copy(update={"path": "data.text"}), [], client)
        with pytest.raises(MetricUnavailableError, match="HTTP 404"):
            await read_metric(src.model_copy(update={"url": url + "/nope"}), [], client)
    finally:
        await runner.cleanup()


async def test_policy_read_gives_per_server_samples_with_readiness(servers: list[str], tmp_path: Any) -> None:
    """`read_policy_metric` on the pool's server list: ready servers are scraped one by one, a booting or
    warming server is not read, and a ready server that does not answer is a sample without a value."""
    from datetime import UTC, datetime, timedelta
    from urllib.parse import urlsplit

    from poolctl.activities.policy_metrics import PolicyMetricActivities
    from poolctl.domain.evaluation import PolicyState, evaluate_policy
    from poolctl.domain.policy_state import MetricReadRequest
    from poolctl.domain.pool_state import ServerRecord
    from poolctl.settings import Settings

    runner, dead = await _serve({})
    await runner.cleanup()
    now = datetime.now(UTC)
    old = now - timedelta(hours=1)

    def record(sid: str, url: str, created_at: datetime, health: str) -> ServerRecord:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        return ServerRecord(
            server_id=sid, host=parts.hostname, port=parts.port, created_at=created_at, health=health
        )

    members = [
        record("a", servers[0], old, "healthy"),  # 20 %
        record("b", servers[1], old, "healthy"),  # 60 %
        record("c", servers[2], now, "healthy"),  # 70 %, but inside instance_warmup_s
        record("d", dead, old, "initial"),  # still booting: not read
        record("e", dead, old, "healthy"),  # ready but does not answer: missing
    ]
    spec = PolicySpec(name="cpu", target=50, stabilization_window_s=0)
    activities = PolicyMetricActivities(
        Settings(state_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'x.db'}")
    )
    try:
        reading = await activities.read_policy_metric(
            MetricReadRequest(team="t", pool="p", source=spec.source, servers=members, instance_warmup_s=300)
        )
    finally:
        await activities.aclose()
    assert reading.current == 5 and reading.servers is not None
    by_id = {s.server_id: s for s in reading.servers}
    assert [by_id[x].ready for x in "abcde"] == [True, True, False, False, True]
    assert (by_id["a"].value, by_id["b"].value, by_id["c"].value, by_id["d"].value) == (
        20.0,
        60.0,
        None,
        None,
    )
    assert by_id["e"].value is None and by_id["e"].error
    assert reading.value == pytest.approx(40.0) and reading.servers_read == 2
    assert reading.error is not None and "1 of 3 ready servers did not answer" in reading.error
    # the decision: 2 values averaging 40 %, one missing (at 0 on a scale-out... here a scale-in: at target)
    d, _ = evaluate_policy(
        spec, current=5, metric=reading.value, now=now, state=PolicyState(), servers=reading.servers
    )
    assert d.metric == pytest.approx(40.0)
    assert "3 of 5 servers ready" in d.formula and "1 without a value at 50" in d.formula


@pytest.mark.parametrize(
    ("value", "says"), [(float("nan"), "nan"), (float("-inf"), "-inf"), (-0.5, "negative")]
)
def test_values_no_policy_may_scale_on_are_unavailable(value: float, says: str) -> None:
    from poolctl.activities.metrics.errors import usable_value

    with pytest.raises(MetricUnavailableError, match=says):
        usable_value("http_json", value)
    assert usable_value("http_json", 0.0) == 0.0
