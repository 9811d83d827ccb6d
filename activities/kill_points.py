"""Test-only crash points: with `POOLCTL_TEST_KILL_AT=<point>` in its environment, a worker SIGKILLs itself
the first time an activity reaches that point, so a fault test can crash it at an exact step (and then
start a new worker). Never set in production; unset, `kill_point` does nothing.

Points: `before_provision`, `after_provider_call` (the provider made the server, the store does not know
it yet), `waiting_for_health` (a new server's first health watch), `registering_in_balancer`,
`draining`, `terminating` (before the provider call), `after_terminate` (the provider terminated it, the
store still counts it)."""

from __future__ import annotations

import os
import signal

KILL_AT_ENV = "POOLCTL_TEST_KILL_AT"
KILL_POINTS = (
    "before_provision",
    "after_provider_call",
    "waiting_for_health",
    "registering_in_balancer",
    "draining",
    "terminating",
    "after_terminate",
)


def kill_point(name: str) -> None:
    """SIGKILL this process if `POOLCTL_TEST_KILL_AT` names `name` (see the module docstring)."""
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
