"""What can go wrong talking to a balancer, as types: shared by the drivers (`activities/balancers`) and by
the built-in proxy's admin endpoint (`balancer/admin.py`), so "not a member" is one type everywhere."""

from __future__ import annotations

from poolctl.domain.errors import PoolctlError

# Error type names for temporalio ApplicationError(type=...): the first two are not worth retrying.
BALANCER_AUTH_ERROR = "BalancerAuthError"
BALANCER_REJECTED_ERROR = "BalancerRejectedError"
BALANCER_UNAVAILABLE_ERROR = "BalancerUnavailableError"


class BalancerError(PoolctlError):
    """A balancer call failed."""


class BalancerUnavailableError(BalancerError):
    """The balancer cannot be reached (not running yet, restarting): a retry may fix it. A driver that could
    not connect sets `address` (the admin URL or Runtime API socket it tried) and a short `reason`
    ("connection refused", "timed out", ...); both are None for an answer that said "later"."""

    def __init__(self, message: str, *, address: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.address = address
        self.reason = reason


class BalancerAuthError(BalancerError):
    """The balancer refused our credentials: retrying will not help."""


class BalancerRejectedError(BalancerError):
    """The balancer rejected the request as invalid: retrying will not help."""


class UnknownMemberError(BalancerError, LookupError):
    """The named server is not a member of the balancer (HAProxy: "No such server"; built-in admin: 404).
    Raised by `BalancerProxy` for an unknown server id and by every driver; draining or removing such a
    server is treated as already done by the pool's activities."""
