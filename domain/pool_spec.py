"""The server pool spec (what operators write in YAML) and the pool's status vocabulary."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from poolctl.domain.balancer_spec import LoadBalancerSpec
from poolctl.domain.bounds import MAX_SERVERS, Seconds, ServerCount, Weight
from poolctl.domain.drift import OrphanPolicy
from poolctl.domain.health_spec import HealthCheckSpec
from poolctl.domain.model import StrictModel
from poolctl.domain.names import NAME_PATTERN
from poolctl.domain.notifications import WebhookSpec
from poolctl.domain.policy_spec import PolicySpec
from poolctl.domain.provider_options import provider_option_problems
from poolctl.domain.static_pool import STATIC_PROVIDER, StaticServer

KNOWN_PROVIDERS = ("local", "fake", "aws", "static")


class PoolStatus(StrEnum):
    """Status of a pool as the original system named them, plus `degraded` (healing stopped)."""

    ACTIVE = "active"
    SCALING = "scaling"
    PAUSED = "paused"
    ERROR = "error"
    DEGRADED = "degraded"
    DELETING = "deleting"


class TerminationPolicy(StrEnum):
    """Which servers a scale-in removes first."""

    OLDEST_FIRST = "oldest_first"
    NEWEST_FIRST = "newest_first"


class PoolSpec(StrictModel):
    """A named group of servers kept between `min_servers` and `max_servers`, at `desired_servers`."""

    name: str = Field(pattern=NAME_PATTERN, description="lower-case letters, digits and '-'")
    environment: str = Field(default="development", pattern=NAME_PATTERN)
    provider: Literal["local", "fake", "aws", "static"] = Field(
        default="local", description="provider driver that runs the servers (static: existing servers)"
    )
    provider_options: dict[str, Any] = Field(default_factory=dict, repr=False)  # may hold credentials
    min_servers: ServerCount = 1
    max_servers: Annotated[ServerCount, Field(ge=1)] = 10
    desired_servers: ServerCount | None = Field(default=None, description="defaults to min_servers")
    auto_healing: bool = True
    heal_after_s: Annotated[Seconds, Field(le=86_400)] = Field(
        default=0.0, description="seconds a server must stay unhealthy before it is replaced"
    )
    server_weight: Weight = Field(default=1, description="balancer weight of each member")
    termination_policy: TerminationPolicy = TerminationPolicy.OLDEST_FIRST
    orphan_policy: OrphanPolicy = Field(
        default=OrphanPolicy.ADOPT,
        description="a server the provider runs under the pool's tag that the pool does not count: adopt it "
        "as a member, or terminate it (drift reconcile)",
    )
    paused: bool = Field(default=False, description="a paused pool makes no scaling actions")
    policies: list[PolicySpec] = Field(default_factory=list)
    health_check: HealthCheckSpec | None = None
    load_balancers: list[LoadBalancerSpec] = Field(default_factory=list)
    webhooks: list[WebhookSpec] = Field(
        default_factory=list, max_length=16, description="receivers of this pool's notifications"
    )
    servers: list[StaticServer] = Field(
        default_factory=list, max_length=MAX_SERVERS, description="existing servers of a static pool"
    )

    @field_validator("provider_options")
    @classmethod
    def _check_provider_options(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        problems = provider_option_problems(str(info.data.get("provider", "local")), v)
        if problems:
            raise ValueError("; ".join(f"{loc}: {msg}" for loc, msg in problems))
        return v

    @model_validator(mode="after")
    def _check_bounds(self) -> PoolSpec:
        if self.min_servers > self.max_servers:
            raise ValueError(
                f"min_servers ({self.min_servers}) is greater than max_servers ({self.max_servers})"
            )
        if self.desired_servers is not None and not (
            self.min_servers <= self.desired_servers <= self.max_servers
        ):
            raise ValueError(
                f"desired_servers ({self.desired_servers}) is outside "
                f"[min_servers, max_servers] = [{self.min_servers}, {self.max_servers}]"
            )
        seen: set[str] = set()
        for p in self.policies:
            if p.name in seen:
                raise ValueError(f"policy name {p.name!r} is used twice")
            seen.add(p.name)
        seen.clear()
        for lb in self.load_balancers:
            if lb.name in seen:
                raise ValueError(f"load balancer name {lb.name!r} is used twice")
            seen.add(lb.name)
        self._check_cross_fields()
        self._check_static()
        return self

    def _check_static(self) -> None:
        """A static pool's size is its server list: no desired_servers; policies only recommend (dry run)."""
        if self.provider != STATIC_PROVIDER:
            if self.servers:
                raise ValueError(
                    f"servers: only a static pool lists its servers (provider: static), not provider {self.provider!r}"
                )
            return
        seen: set[str] = set()
        for s in self.servers:
            if s.address in seen:
                raise ValueError(f"servers: {s.address} is listed twice")
            seen.add(s.address)
        if self.desired_servers is not None:
            raise ValueError(
                "desired_servers: a static pool's size is its servers list; "
                "add or remove servers (servers:, poolctl server add/remove) instead"
            )
        if any(not p.dry_run for p in self.policies):  # recommendation only (domain.static_pool)
            policies = [p if p.dry_run else p.model_copy(update={"dry_run": True}) for p in self.policies]
            object.__setattr__(self, "policies", policies)

    def _check_cross_fields(self) -> None:
        """Rules between the pool and its policies and balancers (each would fail or do nothing at run time)."""
        for p in self.policies:
            if p.min_servers is not None and p.min_servers > self.max_servers:
                raise ValueError(
                    f"policy {p.name!r}: min_servers ({p.min_servers}) is above the pool's max_servers "
                    f"({self.max_servers})"
                )
            if p.max_servers is not None and p.max_servers < self.min_servers:
                raise ValueError(
                    f"policy {p.name!r}: max_servers ({p.max_servers}) is below the pool's min_servers "
                    f"({self.min_servers})"
                )
        active = [lb.name for lb in self.load_balancers if lb.status == "active"]
        if active and self.server_weight == 0:
            raise ValueError(
                f"server_weight 0 sends no traffic to any server, but the pool has load balancer(s) "
                f"{', '.join(active)}: give a weight of 1 or more"
            )
        try:
            self.effective_health_check  # noqa: B018 - built here so that a bad one fails validation, not the workflow
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(
                f"the health check derived from the load balancer's health_check_* settings is invalid: "
                f"{where}: {first['msg']}"
            ) from None

    @property
    def effective_health_check(self) -> HealthCheckSpec | None:
        """The pool's own `health_check`, else one derived from its first load balancer's
        `health_check_*` settings (the original system configured checks on the balancer)."""
        if self.health_check is not None:
            return self.health_check
        for lb in self.load_balancers:
            if lb.status == "active" and lb.health_check_enabled:
                return HealthCheckSpec(
                    type="http",
                    path=lb.health_check_path,
                    interval=lb.health_check_interval,
                    timeout=min(5.0, lb.health_check_interval / 2),
                    healthy_threshold=lb.healthy_threshold,
                    unhealthy_threshold=lb.unhealthy_threshold,
                )
        return None

    @property
    def initial_desired(self) -> int:
        if self.provider == STATIC_PROVIDER:
            return len(self.servers)
        return self.min_servers if self.desired_servers is None else self.desired_servers


class SpecDocument(StrictModel):
    """One YAML document: a team and the pools it owns."""

    team: str = Field(default="default", pattern=NAME_PATTERN)
    webhooks: list[WebhookSpec] = Field(
        default_factory=list, max_length=16, description="receivers of every pool's notifications (team-wide)"
    )
    pools: list[PoolSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_pools(self) -> SpecDocument:
        names = [p.name for p in self.pools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"pool name(s) used twice: {', '.join(dupes)}")
        if self.webhooks:  # team-wide receivers join each pool's own (a pool's own entry wins for its url)
            merged = []
            for p in self.pools:
                own = {w.url for w in p.webhooks}
                extra = [w for w in self.webhooks if w.url not in own]
                merged.append(p.model_copy(update={"webhooks": [*p.webhooks, *extra]}) if extra else p)
            object.__setattr__(self, "pools", merged)
        return self


def provider_change_refusal(old: str, new: str, servers: int) -> str:
    """Why a spec may not switch a pool with live servers to another provider (they could not be
    terminated through the new one)."""
    return (
        f"cannot change provider from {old!r} to {new!r} while the pool has {servers} server(s): "
        "scale it to 0 first (min_servers: 0, desired_servers: 0) or delete the pool and create it again"
    )
