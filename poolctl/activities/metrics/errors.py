"""The one error a metric read raises: the value could not be had, and why."""

from __future__ import annotations

from poolctl.domain.errors import PoolctlError

# ApplicationError type name for activities that re-raise it (workflows match on this string).
METRIC_UNAVAILABLE_ERROR = "MetricUnavailable"


class MetricUnavailableError(PoolctlError):
    """A metric source could not give a number: unreachable, bad answer, no sample, not a number."""

    def __init__(self, source: str, message: str):
        self.source = source
        self.message = message
        super().__init__(f"{source}: {message}")
