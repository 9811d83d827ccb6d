"""The one error a metric read raises (the value could not be had, and why), and the HTTP GET that raises it."""

from __future__ import annotations

import math

import httpx

from poolctl.domain.errors import PoolctlError

# ApplicationError type name for activities that re-raise it (workflows match on this string).
METRIC_UNAVAILABLE_ERROR = "MetricUnavailable"


class MetricUnavailableError(PoolctlError):
    """A metric source could not give a number: unreachable, bad answer, no sample, not a number."""

    def __init__(self, source: str, message: str):
        self.source = source
        self.message = message
        super().__init__(f"{source}: {message}")


def usable_value(label: str, value: float) -> float:
    """`value` if a policy may scale on it; a MetricUnavailableError for NaN, an infinity or a negative
    number (utilisation, rates, queue depths and counts are never below zero: a negative is garbage)."""
    if not math.isfinite(value):
        raise MetricUnavailableError(label, f"value is {value}")
    if value < 0:
        raise MetricUnavailableError(label, f"value is negative ({value:g}): not a usable metric")
    return value


async def get_ok(client: httpx.AsyncClient, url: str, label: str, timeout_s: float) -> httpx.Response:
    """GET `url`; a transport error or a status other than 200 is a MetricUnavailableError named `label`."""
    try:
        resp = await client.get(url, timeout=timeout_s)
    except httpx.HTTPError as e:
        raise MetricUnavailableError(label, f"request failed: {type(e).__name__}: {e}") from e
    if resp.status_code != 200:
        raise MetricUnavailableError(label, f"HTTP {resp.status_code}")
    return resp
