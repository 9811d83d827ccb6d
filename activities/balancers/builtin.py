"""The `builtin` balancer driver: talks to the built-in proxy's admin endpoint over HTTP (httpx)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from poolctl.activities.balancers.base import (
    BalancerAuthError,
    BalancerDriver,
    BalancerError,
    BalancerRejectedError,
    BalancerUnavailableError,
    UnknownMemberError,
    connect_failure,
)
from poolctl.domain.balancer_spec import LoadBalancerSpec
from poolctl.domain.balancing import BalancerStats, Member, SyncResult, diff_members


class BuiltinBalancerDriver(BalancerDriver):
    """Driver for `python -m poolctl.balancer` / `BalancerProxy`, through `admin_url` with a bearer token."""

    driver_name = "builtin"

    def __init__(
        self, admin_url: str, token: str, *, timeout_s: float = 5.0, client: httpx.AsyncClient | None = None
    ):
        self.admin_url = admin_url.rstrip("/")
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout_s)
        self._headers = {"Authorization": f"Bearer {token}"}

    @classmethod
    def from_spec(
        cls, spec: LoadBalancerSpec, token: str, *, admin_host: str = "127.0.0.1"
    ) -> BuiltinBalancerDriver:
        return cls(f"http://{admin_host}:{spec.effective_admin_port}", token)

    async def _call(self, method: str, path: str, json: Any = None) -> Any:
        try:
            r = await self._client.request(method, self.admin_url + path, json=json, headers=self._headers)
        except httpx.TransportError as e:
            why = connect_failure(e)
            raise BalancerUnavailableError(
                f"balancer admin {self.admin_url} unreachable: {why}", address=self.admin_url, reason=why
            ) from e
        if r.status_code == 401:
            raise BalancerAuthError(f"balancer admin {self.admin_url} refused the token")
        if r.status_code == 404:
            raise UnknownMemberError(_message(r))
        if 400 <= r.status_code < 500:
            raise BalancerRejectedError(f"{method} {path}: {_message(r)}")
        if r.status_code >= 500:
            raise BalancerUnavailableError(f"{method} {path}: HTTP {r.status_code} {_message(r)}")
        return r.json()

    async def members(self) -> list[Member]:
        data = await self._call("GET", "/admin/members")
        return [Member.model_validate(m) for m in data["members"]]

    async def sync_members(self, desired: Sequence[Member]) -> SyncResult:
        ids = [m.server_id for m in desired]
        if len(set(ids)) != len(ids):
            raise BalancerRejectedError("a server_id appears twice in the desired member list")
        plan = diff_members(await self.members(), desired)
        if not plan.changed:
            return plan
        body = {"members": [m.model_dump(mode="json", exclude={"active_connections"}) for m in desired]}
        data = await self._call("PUT", "/admin/members", body)
        return SyncResult.model_validate(data)

    async def drain(self, server_id: str) -> None:
        await self._call("POST", f"/admin/members/{_quote(server_id)}/drain")

    async def active_connections(self, server_id: str) -> int:
        for m in await self.members():
            if m.server_id == server_id:
                return m.active_connections
        # not a member (any more): the stats still know its in-flight requests
        for s in (await self.stats()).servers:
            if s.server_id == server_id:
                return s.active_connections
        return 0

    async def stats(self) -> BalancerStats:
        return BalancerStats.model_validate(await self._call("GET", "/admin/stats"))

    async def close(self) -> None:
        if self._own_client:
            await self._client.aclose()


def _quote(server_id: str) -> str:
    from urllib.parse import quote

    return quote(server_id, safe="")


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error", r.text))
    except (ValueError, AttributeError):
        return r.text


__all__ = ["BalancerError", "BuiltinBalancerDriver"]
