"""The provider driver interface: provision and terminate servers, idempotently, by key."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel, Field


class ServerState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    TERMINATED = "terminated"


class ServerInfo(BaseModel):
    """A server as its provider knows it."""

    server_id: str
    provider: str
    pool: str = Field(description="team/pool key the server was provisioned for")
    idempotency_key: str
    host: str
    port: int
    state: ServerState
    created_at: datetime
    pid: int | None = None
    details: dict[str, Any] = Field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class ProvisionRequest(BaseModel):
    pool: str
    idempotency_key: str = Field(
        description="same key -> same server, never a second one (like EC2 ClientToken)"
    )
    options: dict[str, Any] = Field(default_factory=dict)


class ProviderError(Exception):
    """A provider call failed in a way a retry may fix."""


class ProviderQuotaError(ProviderError):
    """The provider refuses more servers: retrying will not help."""


class ProviderConfigError(ProviderError):
    """The provider is misconfigured (credentials, options): retrying will not help."""


class Provider(Protocol):
    """What every provider driver offers. All calls are idempotent."""

    name: str

    async def provision(self, request: ProvisionRequest) -> ServerInfo:
        """Create (or return the existing) server for `request.idempotency_key`; returns once it is running."""
        ...

    async def terminate(self, server_id: str) -> ServerInfo | None:
        """Stop a server. Terminating a terminated or unknown server succeeds (returns None if unknown)."""
        ...

    async def describe(self, server_id: str) -> ServerInfo | None:
        """The server's current state, or None if the provider never had it."""
        ...

    async def list_servers(self, pool: str | None = None) -> list[ServerInfo]:
        """Servers the provider has (all states), optionally only one pool's."""
        ...
