"""Scrape source: a gauge read from each server's Prometheus text endpoint, per server or aggregated."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families

from poolctl.activities.metrics.errors import MetricUnavailableError, get_ok, usable_value
from poolctl.domain.readiness import aggregate


def parse_prometheus_text(text: str, metric: str) -> float | None:
    """The value of gauge `metric` in a Prometheus text exposition (the sum over its label sets), or None.

    Parsed by prometheus-client's text parser (quoted label values, escapes, timestamps). A page that does
    not parse yields None, as Prometheus fails such a scrape as a whole: no value is taken from it."""
    total: float | None = None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == metric:
                    total = sample.value if total is None else total + sample.value
    except ValueError:
        return None
    return total


async def scrape_one(client: httpx.AsyncClient, url: str, metric: str, timeout_s: float) -> float:
    """`metric` as server `url` reports it at that moment."""
    label = f"scrape {url}"
    resp = await get_ok(client, url, label, timeout_s)
    value = parse_prometheus_text(resp.text, metric)
    if value is None:
        raise MetricUnavailableError(label, f"no sample of {metric!r} in the answer")
    return usable_value(f"{label} {metric}", value)


async def scrape_servers(
    metric: str,
    server_urls: list[str],
    client: httpx.AsyncClient,
    *,
    path: str = "/metrics",
    timeout_s: float = 5.0,
) -> list[float | MetricUnavailableError]:
    """`metric` from each server (base URLs), in order: its value, or the error that kept it from one.

    Never raises for a server that does not answer: the decision code treats it as a missing server.
    """
    urls = [u.rstrip("/") + path for u in server_urls]
    results = await asyncio.gather(
        *(scrape_one(client, u, metric, timeout_s) for u in urls), return_exceptions=True
    )
    out: list[float | MetricUnavailableError] = []
    for r in results:
        if isinstance(r, MetricUnavailableError | float):
            out.append(r)
        elif isinstance(r, BaseException):
            raise r
    return out


async def scrape_metric(
    metric: str,
    server_urls: list[str],
    client: httpx.AsyncClient,
    *,
    aggregate_by: str = "avg",
    path: str = "/metrics",
    timeout_s: float = 5.0,
) -> float:
    """Aggregate `metric` over every server (base URLs). Every server must answer: a partial read raises.

    Pass only the servers that should be serving (booted and healthy); a missing server would otherwise
    bias the average, and the policy holds rather than scale on partial data.
    """
    if not server_urls:
        raise MetricUnavailableError(f"scrape {metric}", "no servers to scrape")
    urls = [u.rstrip("/") + path for u in server_urls]
    results = await asyncio.gather(
        *(scrape_one(client, u, metric, timeout_s) for u in urls), return_exceptions=True
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        for r in failed:
            if not isinstance(r, MetricUnavailableError):
                raise r
        detail = "; ".join(str(r) for r in failed)
        raise MetricUnavailableError(
            f"scrape {metric}", f"{len(failed)} of {len(urls)} servers did not answer: {detail}"
        )
    values = [r for r in results if isinstance(r, float)]
    return aggregate(values, aggregate_by)
