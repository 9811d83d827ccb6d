"""Balancer drivers by spec: `make_driver(spec, token)` picks the `builtin` or `haproxy` driver.

Kept apart from `base` so the interface module imports no driver (the drivers import `base`)."""

from __future__ import annotations

from poolctl.activities.balancers.base import BalancerDriver
from poolctl.activities.balancers.builtin import BuiltinBalancerDriver
from poolctl.activities.balancers.haproxy import HAProxyDriver
from poolctl.domain.balancer_spec import LoadBalancerSpec

__all__ = ["make_driver"]


def make_driver(spec: LoadBalancerSpec, token: str, admin_host: str = "127.0.0.1") -> BalancerDriver:
    """The driver for a balancer spec. `token` is the builtin admin token (unused by haproxy, whose
    Runtime API socket is protected by its file mode); `admin_host` is where builtin admin endpoints
    listen (the `balancer_admin_host` setting)."""
    if spec.driver == "builtin":
        return BuiltinBalancerDriver.from_spec(spec, token, admin_host=admin_host)
    if spec.driver == "haproxy":
        return HAProxyDriver.from_spec(spec)
    raise NotImplementedError(f"balancer driver {spec.driver!r} is not implemented")
