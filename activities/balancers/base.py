"""The balancer driver interface: keep a balancer's members in line with a desired list, drain, read stats.

Every call is idempotent. The interface maps onto HAProxy's Runtime API as well as onto the built-in
proxy's admin endpoint:

    sync_members  add server / set server ... addr / weight / state ready|drain|maint / del server
    drain         set server <backend>/<server> state drain
    active_connections, stats   show stat (scur, hrsp_2xx ...)
"""

from __future__ import annotations

import asyncio
import socket
from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType

from poolctl.domain.balancer_errors import (
    BALANCER_AUTH_ERROR,
    BALANCER_REJECTED_ERROR,
    BALANCER_UNAVAILABLE_ERROR,
    BalancerAuthError,
    BalancerError,
    BalancerRejectedError,
    BalancerUnavailableError,
    UnknownMemberError,
)
from poolctl.domain.balancing import BalancerStats, Member, MemberState, SyncResult, diff_members

__all__ = [
    "BALANCER_AUTH_ERROR",
    "BALANCER_REJECTED_ERROR",
    "BALANCER_UNAVAILABLE_ERROR",
    "BalancerAuthError",
    "BalancerDriver",
    "BalancerError",
    "BalancerRejectedError",
    "BalancerStats",
    "BalancerUnavailableError",
    "Member",
    "MemberState",
    "SyncResult",
    "UnknownMemberError",
    "connect_failure",
    "diff_members",
]


def connect_failure(error: BaseException) -> str:
    """A short reason for a failed connection to a balancer ("connection refused", "timed out", "no such
    socket", ...): the first known cause in `error`'s chain (httpx wraps the socket's OSError twice), else
    the innermost error's text, never a repr."""
    seen: list[BaseException] = []
    e: BaseException | None = error
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    for e in seen:
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, FileNotFoundError):
            return "no such socket"
        if isinstance(e, PermissionError):
            return "permission denied"
        if isinstance(e, socket.gaierror):
            return "address not found"
        if isinstance(e, TimeoutError) or "Timeout" in type(e).__name__:
            return "timed out"
    return next((str(e) for e in reversed(seen) if str(e)), type(error).__name__)


class BalancerDriver(ABC):
    """One balancer, as a driver sees it. Implementations: `builtin` (admin endpoint), `haproxy` (Runtime API)."""

    driver_name: str = ""

    @abstractmethod
    async def members(self) -> list[Member]:
        """The balancer's current members, with live `active_connections`."""

    @abstractmethod
    async def sync_members(self, desired: Sequence[Member]) -> SyncResult:
        """Make the membership exactly `desired` (address, weight, state per server_id), applying only the
        difference; calling it again changes nothing. After a balancer restart it rebuilds everything.
        To remove a server gracefully: sync it as `draining`, wait for zero connections, then sync without it."""

    @abstractmethod
    async def drain(self, server_id: str) -> None:
        """No new requests to the server; in-flight ones finish. Raises UnknownMemberError."""

    @abstractmethod
    async def active_connections(self, server_id: str) -> int:
        """In-flight requests on the server (0 for a server that is not a member)."""

    @abstractmethod
    async def stats(self) -> BalancerStats:
        """Traffic statistics of the balancer and each server."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections held by the driver."""

    async def wait_drained(self, server_id: str, timeout_s: float, poll_interval_s: float = 0.5) -> bool:
        """Poll until the server has no active connections; False if `timeout_s` passed first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if await self.active_connections(server_id) == 0:
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(poll_interval_s, remaining))

    async def __aenter__(self) -> BalancerDriver:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
