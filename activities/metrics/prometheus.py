"""Prometheus source: an instant PromQL query through the HTTP API (`/api/v1/query`), one sample expected."""

from __future__ import annotations

import math
from typing import Any

import httpx

from poolctl.activities.metrics.errors import MetricUnavailableError


def value_of_query_answer(body: Any, query: str) -> float:
    """The single number in a `/api/v1/query` JSON answer (vector of one sample, or scalar)."""
    label = f"prometheus {query!r}"
    if not isinstance(body, dict):
        raise MetricUnavailableError(label, "answer is not a JSON object")
    if body.get("status") != "success":
        raise MetricUnavailableError(
            label, f"query failed: {body.get('errorType', '?')}: {body.get('error', 'no error text')}"
        )
    data = body.get("data") or {}
    kind = data.get("resultType")
    result: Any = data.get("result")
    try:
        if kind == "vector":
            if not result:
                raise MetricUnavailableError(label, "no sample (empty vector): is the target up?")
            if len(result) > 1:
                raise MetricUnavailableError(
                    label, f"{len(result)} series; aggregate the query to one (e.g. avg(...))"
                )
            raw = result[0]["value"][1]
        elif kind == "scalar":
            raw = result[1]
        else:
            raise MetricUnavailableError(label, f"result type {kind!r}; want vector or scalar")
        value = float(raw)
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise MetricUnavailableError(label, f"malformed answer: {e!r}") from e
    if not math.isfinite(value):
        raise MetricUnavailableError(label, f"value is {value}")
    return value


async def query_prometheus(
    url: str, query: str, client: httpx.AsyncClient, *, timeout_s: float = 5.0
) -> float:
    """Run `query` as an instant query on the Prometheus server at base `url`."""
    label = f"prometheus {query!r}"
    endpoint = url.rstrip("/") + "/api/v1/query"
    try:
        resp = await client.get(endpoint, params={"query": query}, timeout=timeout_s)
    except httpx.HTTPError as e:
        raise MetricUnavailableError(label, f"request to {endpoint} failed: {type(e).__name__}: {e}") from e
    try:
        body = resp.json()
    except ValueError as e:
        raise MetricUnavailableError(label, f"HTTP {resp.status_code}, answer is not JSON") from e
    if resp.status_code != 200 and not isinstance(body, dict):
        raise MetricUnavailableError(label, f"HTTP {resp.status_code}")
    return value_of_query_answer(body, query)
