"""Load balancer specs: where a pool's balancer listens, how it spreads traffic, TLS, health checks, driver."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from poolctl.domain.bounds import ConsecutiveCount, Port, PositiveSeconds, Seconds, UrlPath
from poolctl.domain.model import StrictModel
from poolctl.domain.names import NAME_PATTERN

Algorithm = Literal["round_robin", "least_connections", "ip_hash", "weighted"]
ALGORITHMS: tuple[str, ...] = ("round_robin", "least_connections", "ip_hash", "weighted")

# RFC 6265 cookie-name = token (RFC 7230 tchar)
COOKIE_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$"
ADMIN_PORT_OFFSET = 1000
ADMIN_HOST = "127.0.0.1"
_FILE_PATH_PATTERN = r"^[^\x00-\x1f\x7f]{1,4096}$"


class HAProxyOptions(StrictModel):
    """How the `haproxy` driver reaches a running HAProxy: its Runtime API socket and the backend to manage."""

    stats_socket: str = Field(
        default="/run/haproxy/admin.sock",
        pattern=r"^[!-~]{1,1024}$",
        description="Runtime API socket: a unix socket path, or host:port for a TCP stats socket",
    )
    backend: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="backend name (HAProxy's name characters); defaults to the balancer's name",
    )
    server_template_prefix: str = Field(default="srv", pattern=r"^[A-Za-z0-9_.-]{1,32}$")


class LoadBalancerSpec(StrictModel):
    """A load balancer in front of a pool (field names as the original system had them)."""

    name: str = Field(pattern=NAME_PATTERN)
    ip_address: str = Field(default="127.0.0.1", description="listen address of the balancer")
    port: Port = Field(default=8080, description="listen port of the balancer")
    protocol: Literal["http", "https"] = "http"
    algorithm: Algorithm = "round_robin"
    status: Literal["active", "inactive"] = Field(
        default="active", description="an inactive balancer is not run"
    )

    # sticky sessions
    sticky_sessions: bool = False
    sticky_cookie: str = Field(default="POOLCTL_SRV", pattern=COOKIE_NAME_PATTERN)

    # TLS termination
    ssl_enabled: bool = Field(default=False, description="terminate TLS at the balancer (protocol https)")
    ssl_certificate: str | None = Field(
        default=None, pattern=_FILE_PATH_PATTERN, description="PEM certificate (chain) file"
    )
    ssl_key: str | None = Field(default=None, pattern=_FILE_PATH_PATTERN, description="PEM private key file")

    # data plane
    driver: Literal["builtin", "haproxy"] = "builtin"
    haproxy: HAProxyOptions | None = Field(default=None, description="options of the haproxy driver")
    admin_port: Port | None = Field(
        default=None,
        description=f"builtin admin listener on 127.0.0.1; default port+{ADMIN_PORT_OFFSET}",
    )
    drain_timeout_s: Annotated[Seconds, Field(le=86_400)] = Field(
        default=30.0, description="max wait for a drained server"
    )
    drain_sticky: Literal["keep", "move"] = Field(
        default="keep",
        description="sticky clients of a draining server: keep (HAProxy's behaviour: it serves them until "
        "the drain ends, at most drain_timeout_s) or move (re-balanced at once)",
    )
    slow_start_s: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description="a server entering rotation ramps from 1/16 of its weight to its weight over this time "
        "(HAProxy slowstart); 0 = full weight at once",
    )

    # builtin data-plane limits (HAProxy / nginx terms in the descriptions; docs/security.md)
    request_head_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="deadline for a whole request head, from its first byte (or the accept): else 408 "
        "(HAProxy `timeout http-request`, nginx `client_header_timeout`)",
    )
    client_send_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="a client that reads nothing of its response for this long is disconnected and the "
        "server's connection freed (nginx `send_timeout`, HAProxy `timeout client`)",
    )
    max_client_connections: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="concurrent client connections; more get 503 and are closed (HAProxy `maxconn`)",
    )

    # health checks (the original system's names); the balancer only sends traffic to healthy servers
    health_check_enabled: bool = True
    health_check_path: UrlPath = Field(default="/health")
    health_check_interval: Annotated[PositiveSeconds, Field(le=3600)] = Field(
        default=30.0, description="seconds between checks"
    )
    healthy_threshold: ConsecutiveCount = 2
    unhealthy_threshold: ConsecutiveCount = 3

    @field_validator("ip_address")
    @classmethod
    def _check_ip(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"ip_address {v!r} is not an IPv4 or IPv6 address") from None
        return v

    @model_validator(mode="after")
    def _check_consistency(self) -> LoadBalancerSpec:
        if self.protocol == "https" and not self.ssl_enabled:
            raise ValueError("protocol 'https' needs ssl_enabled: true (TLS is terminated at the balancer)")
        if self.ssl_enabled and self.protocol != "https":
            raise ValueError("ssl_enabled: true needs protocol: https")
        if self.ssl_enabled and self.driver == "builtin":
            missing = [f for f in ("ssl_certificate", "ssl_key") if not getattr(self, f)]
            if missing:
                raise ValueError(f"ssl_enabled: true needs {' and '.join(missing)} (paths to PEM files)")
        if self.haproxy is not None and self.driver != "haproxy":
            raise ValueError("'haproxy' options are given but driver is not 'haproxy'")
        if self.driver == "haproxy" and self.slow_start_s != int(self.slow_start_s):
            raise ValueError(
                f"slow_start_s {self.slow_start_s} is not a whole number of seconds: HAProxy's slowstart "
                "counts whole seconds (driver: haproxy); use a whole number or driver: builtin"
            )
        if self.driver == "builtin":
            admin = self.effective_admin_port
            if admin > 65535:
                raise ValueError(
                    f"admin_port defaults to port+{ADMIN_PORT_OFFSET} = {admin}, which is above 65535; set admin_port"
                )
            if admin == self.port:
                raise ValueError(f"admin_port ({admin}) must differ from port ({self.port})")
        return self

    def listen_addresses(self) -> list[tuple[str, tuple[str, int]]]:
        """What this balancer binds when it runs: ("port", (ip, port)) and, for the builtin driver,
        ("admin_port", ("127.0.0.1", admin port))."""
        out: list[tuple[str, tuple[str, int]]] = [("port", (self.ip_address, self.port))]
        if self.driver == "builtin":
            out.append(("admin_port", (ADMIN_HOST, self.effective_admin_port)))
        return out

    @property
    def effective_admin_port(self) -> int:
        return self.admin_port if self.admin_port is not None else self.port + ADMIN_PORT_OFFSET

    @property
    def haproxy_backend(self) -> str:
        return (self.haproxy.backend if self.haproxy and self.haproxy.backend else None) or self.name


def addresses_overlap(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Would binding both (ip, port) listeners clash? Same port and the same address, or either is a wildcard
    (0.0.0.0 or ::, which take the port on every address)."""
    if a[1] != b[1]:
        return False
    ia, ib = ipaddress.ip_address(a[0]), ipaddress.ip_address(b[0])
    return ia == ib or ia.is_unspecified or ib.is_unspecified
