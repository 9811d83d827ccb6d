"""Bounded number and text types shared by every spec: finite, sensible ranges, no YAML booleans as numbers.

Every number an operator writes is `Strict` (a boolean such as YAML 1.1's `yes` is not a count) and finite
(`.inf`, `.nan` and `1e300` are refused): a spec that validates never overflows a `timedelta` later.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, Strict

MAX_SERVERS = 10_000
"""Most servers a pool (and any count of servers in a spec) may name."""
MAX_SECONDS = 31 * 86_400
"""Longest duration a spec may give (31 days): a monthly schedule window; `timedelta` is far away."""
MAX_METRIC_VALUE = 1e15
"""Largest magnitude of a metric threshold, target or step bound (a queue depth, bytes/s, a percentage)."""
MAX_ADJUSTMENT = 10_000.0
"""Largest magnitude of a step adjustment: servers (change/exact capacity) or percent of capacity."""

ServerCount = Annotated[int, Strict(), Field(ge=0, le=MAX_SERVERS)]
"""A number of servers, 0..10,000."""
ServerDelta = Annotated[int, Strict(), Field(ge=1, le=MAX_SERVERS)]
"""Servers added or removed at once, 1..10,000."""
Seconds = Annotated[float, Strict(), Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]
"""A duration in seconds, 0..31 days, finite (integers are accepted)."""
PositiveSeconds = Annotated[float, Strict(), Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)]
"""A duration in seconds above 0, at most 31 days, finite."""
MetricValue = Annotated[
    float, Strict(), Field(ge=-MAX_METRIC_VALUE, le=MAX_METRIC_VALUE, allow_inf_nan=False)
]
"""A metric threshold, target or bound: finite, |x| <= 1e15."""
Fraction = Annotated[float, Strict(), Field(ge=0, le=10, allow_inf_nan=False)]
"""A ratio such as a tolerance (0.1 = 10 %), 0..10."""
Adjustment = Annotated[float, Strict(), Field(ge=-MAX_ADJUSTMENT, le=MAX_ADJUSTMENT, allow_inf_nan=False)]
"""A step adjustment: finite, |x| <= 10,000."""
Port = Annotated[int, Strict(), Field(ge=1, le=65535)]
"""A TCP port, 1..65535."""
Weight = Annotated[int, Strict(), Field(ge=0, le=256)]
"""A balancer weight, 0..256 (HAProxy's range)."""
ConsecutiveCount = Annotated[int, Strict(), Field(ge=1, le=100)]
"""Consecutive results before a state changes (HAProxy `rise`/`fall`), 1..100."""


def _check_url_path(v: str) -> str:
    if not v.startswith("/"):
        raise ValueError(f"path {v!r} must start with '/' (a path on the server itself)")
    if v.startswith("//"):
        raise ValueError(f"path {v!r} must not start with '//' (that would name another host)")
    bad = [c for c in v if not ("!" <= c <= "~") or c == "#" or c == "\\"]
    if bad:
        raise ValueError(
            f"path {v!r} may hold only printable ASCII without spaces, '#' or '\\' (percent-encode the rest)"
        )
    return v


UrlPath = Annotated[str, Strict(), Field(max_length=2048), AfterValidator(_check_url_path)]
"""The path (and query) of a request to a pool's server: `/`-rooted, printable ASCII, no space, '#' or '\\'."""


def check_http_url(v: str) -> str:
    """An absolute `http`/`https` URL with a host (and a valid port if given); nothing else is fetched."""
    from urllib.parse import urlsplit

    if any(not ("!" <= c <= "~") for c in v):
        raise ValueError(f"URL {v!r} may hold only printable ASCII without spaces")
    try:
        parts = urlsplit(v)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"URL {v!r} does not parse: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"URL {v!r} must use http or https")
    if not parts.hostname:
        raise ValueError(f"URL {v!r} has no host")
    if port == 0:
        raise ValueError(f"URL {v!r} has port 0")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"URL {v!r} must not carry credentials (user:password@)")
    if parts.fragment:
        raise ValueError(f"URL {v!r} must not have a fragment (#...)")
    return v


HttpUrlText = Annotated[str, Strict(), Field(max_length=2048), AfterValidator(check_http_url)]
"""An `http://` or `https://` URL with a host, kept as the string the operator wrote."""
