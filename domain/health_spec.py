"""Health check specs: what a check probes, how often, and when a server changes state.

All durations are seconds (floats). The vocabulary follows HAProxy (`inter`, `rise`, `fall`)
and AWS target groups (healthy/unhealthy thresholds, grace period):

```yaml
health_check:
  type: http               # http | https | tcp | icmp
  path: /health
  method: GET
  expected_status: [200, "300-399"]
  body_match: "ok"         # or body_regex: "^ok"
  interval: 5
  timeout: 2
  healthy_threshold: 2
  unhealthy_threshold: 3
  grace_period: 60
  jitter: "10%"            # or seconds: 0.5
```
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Annotated, Literal

from pydantic import Field, Strict, field_validator, model_validator

from poolctl.domain.bounds import ConsecutiveCount, Port, PositiveSeconds, Seconds, UrlPath
from poolctl.domain.model import StrictModel

HTTP_ONLY_FIELDS = ("path", "method", "expected_status", "body_match", "body_regex", "max_body_bytes")
HTTPS_ONLY_FIELDS = ("tls_verify", "ca_file")
DEFAULT_EXPECTED_STATUS: tuple[str, ...] = ("200-399",)
MAX_BODY_BYTES_LIMIT = 1024 * 1024

_RANGE_RE = re.compile(r"^\s*(\d{3})\s*(?:-\s*(\d{3})\s*)?$")


def parse_status_item(item: int | str) -> tuple[int, int]:
    """`200` -> (200, 200); `"200-399"` -> (200, 399). Raises ValueError with a clear message."""
    if isinstance(item, bool):
        raise ValueError(f"expected_status entry {item!r} is not a status code")
    if isinstance(item, int):
        lo = hi = item
    else:
        m = _RANGE_RE.match(item)
        if not m:
            raise ValueError(
                f"expected_status entry {item!r} is neither a code (200) nor a range ('200-399')"
            )
        lo = int(m.group(1))
        hi = int(m.group(2) or m.group(1))
    if not (100 <= lo <= 599 and 100 <= hi <= 599):
        raise ValueError(f"expected_status entry {item!r} is outside the HTTP status codes 100-599")
    if lo > hi:
        raise ValueError(f"expected_status range {item!r} is reversed (low end above high end)")
    return lo, hi


def _default_expected_status() -> list[int | str]:
    return list(DEFAULT_EXPECTED_STATUS)


class HealthCheckSpec(StrictModel):
    """One health check on every server of a pool (or every member of a balancer)."""

    type: Literal["http", "https", "tcp", "icmp"] = "http"
    # --- HTTP(S) only ---
    path: UrlPath = Field(default="/health", description="request path (and query) for http/https")
    method: Literal["GET", "HEAD", "POST", "OPTIONS"] = "GET"
    expected_status: list[Annotated[int, Strict()] | Annotated[str, Strict(), Field(max_length=16)]] = Field(
        default_factory=_default_expected_status,
        max_length=100,
        description="codes and/or inclusive ranges, e.g. [200, '300-399']; default 200-399",
    )
    body_match: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_BODY_BYTES_LIMIT,
        description="substring the body must contain",
    )
    body_regex: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="regular expression the body must match (search)",
    )
    max_body_bytes: Annotated[int, Strict()] = Field(
        default=64 * 1024,
        ge=1,
        le=MAX_BODY_BYTES_LIMIT,
        description="at most this many bytes of the body are read (and matched)",
    )
    # --- HTTPS only ---
    tls_verify: bool = Field(default=True, description="verify the server certificate (https)")
    ca_file: str | None = Field(
        default=None,
        pattern=r"^[^\x00-\x1f\x7f]{1,4096}$",
        description="PEM bundle to verify against instead of the system store",
    )
    # --- every type but icmp ---
    port: Port | None = Field(default=None, description="probe this port; default the server's port")
    # --- timing and thresholds ---
    interval: Annotated[PositiveSeconds, Field(le=3600)] = Field(
        default=30.0, description="seconds between probes"
    )
    timeout: Annotated[PositiveSeconds, Field(le=3600)] = Field(
        default=5.0, description="seconds a probe may take; must be below interval"
    )
    healthy_threshold: ConsecutiveCount = Field(
        default=2, description="consecutive successes to become healthy"
    )
    unhealthy_threshold: ConsecutiveCount = Field(
        default=3, description="consecutive failures to become unhealthy"
    )
    grace_period: Annotated[Seconds, Field(le=24 * 3600)] = Field(
        default=0.0,
        description="seconds after the server starts during which failures do not mark it unhealthy",
    )
    jitter: Annotated[float, Strict(), Field(allow_inf_nan=False)] | Annotated[str, Strict()] = Field(
        default="10%",
        description=(
            "random delay added to each probe's scheduled time, to spread probes: "
            "a number is seconds (0.5), a string ending in '%' is a fraction of interval ('10%'). "
            "Must be below interval."
        ),
    )

    @field_validator("expected_status")
    @classmethod
    def _status_items(cls, v: list[int | str]) -> list[int | str]:
        if not v:
            raise ValueError("expected_status must list at least one code or range")
        for item in v:
            parse_status_item(item)
        return v

    @field_validator("body_regex")
    @classmethod
    def _regex_compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"body_regex {v!r} is not a valid regular expression: {e}") from e
        return v

    @field_validator("jitter")
    @classmethod
    def _jitter_form(cls, v: float | str) -> float | str:
        if isinstance(v, str):
            s = v.strip()
            if not s.endswith("%"):
                raise ValueError(f"jitter {v!r}: use seconds (0.5) or a percentage of interval ('10%')")
            try:
                pct = float(s[:-1])
            except ValueError as e:
                raise ValueError(f"jitter {v!r} is not a percentage like '10%'") from e
            if not (0 <= pct < 100):
                raise ValueError(f"jitter {v!r} must be at least 0% and below 100% of interval")
            return s
        if v < 0:
            raise ValueError(f"jitter ({v}) must not be negative")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> HealthCheckSpec:
        if self.timeout >= self.interval:
            raise ValueError(
                f"timeout ({self.timeout}s) must be less than interval ({self.interval}s): "
                "a probe must finish before the next one is due"
            )
        if self.jitter_seconds >= self.interval:
            raise ValueError(
                f"jitter ({self.jitter!r} = {self.jitter_seconds}s) must be less than interval ({self.interval}s)"
            )
        if self.body_match is not None and self.body_regex is not None:
            raise ValueError("set body_match (substring) or body_regex, not both")
        if self.method == "HEAD" and (self.body_match is not None or self.body_regex is not None):
            raise ValueError("method HEAD returns no body: body_match/body_regex need GET, POST or OPTIONS")
        if self.type in ("tcp", "icmp"):
            given = self._non_default(HTTP_ONLY_FIELDS + HTTPS_ONLY_FIELDS)
            if given:
                raise ValueError(f"{', '.join(given)}: only for http/https checks, not type {self.type!r}")
        if self.type == "http":
            given = self._non_default(HTTPS_ONLY_FIELDS)
            if given:
                raise ValueError(f"{', '.join(given)}: only for https checks, not type 'http'")
        if self.type == "icmp" and self.port is not None:
            raise ValueError("port does not apply to icmp checks")
        return self

    def _non_default(self, names: tuple[str, ...]) -> list[str]:
        """Fields given a non-default value (value-based, so a JSON round trip stays valid)."""
        fields = type(self).model_fields
        return [n for n in names if getattr(self, n) != fields[n].get_default(call_default_factory=True)]

    # --- derived values (pure) ---

    @property
    def jitter_seconds(self) -> float:
        """The maximum random delay added to each probe, in seconds."""
        if isinstance(self.jitter, str):
            return self.interval * float(self.jitter.strip()[:-1]) / 100.0
        return float(self.jitter)

    @cached_property
    def status_ranges(self) -> tuple[tuple[int, int], ...]:
        return tuple(parse_status_item(i) for i in self.expected_status)

    def status_ok(self, code: int) -> bool:
        return any(lo <= code <= hi for lo, hi in self.status_ranges)

    @cached_property
    def compiled_body_regex(self) -> re.Pattern[str] | None:
        return re.compile(self.body_regex) if self.body_regex is not None else None

    @property
    def needs_body(self) -> bool:
        return self.body_match is not None or self.body_regex is not None

    def body_ok(self, body: str) -> bool:
        if self.body_match is not None and self.body_match not in body:
            return False
        rx = self.compiled_body_regex
        return not (rx is not None and rx.search(body) is None)

    def target_port(self, server_port: int | None) -> int | None:
        """The port to probe: the override, else the server's own port (None for icmp)."""
        if self.type == "icmp":
            return None
        return self.port if self.port is not None else server_port
