"""Every setting poolctl reads, in one place: environment variables prefixed POOLCTL_ and an optional file."""

from __future__ import annotations

import os
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def is_pem(value: str) -> bool:
    """Is `value` PEM text (rather than a path to a PEM file)?"""
    return "-----BEGIN " in value


def pem_bytes(value: str) -> bytes:
    """The PEM bytes of a setting that holds either PEM text or a path to a PEM file."""
    return value.encode() if is_pem(value) else Path(value).read_bytes()


def _default_state_dir() -> Path:
    return Path(os.environ.get("POOLCTL_STATE_DIR", ".poolctl")).resolve()


class Settings(BaseSettings):
    """poolctl settings. Each field is read from `POOLCTL_<NAME>` (e.g. `POOLCTL_DATABASE_URL`),
    then from the file named by `POOLCTL_ENV_FILE` (default `poolctl.env`), then the default."""

    model_config = SettingsConfigDict(
        env_prefix="POOLCTL_",
        env_file=os.environ.get("POOLCTL_ENV_FILE", "poolctl.env"),
        extra="ignore",
    )

    state_dir: Path = Field(
        default_factory=_default_state_dir, description="Logs, pids, local servers, SQLite files."
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL; default sqlite:///<state_dir>/poolctl.db. "
        "PostgreSQL: postgresql+psycopg://user@host:5432/db",
    )
    temporal_address: str = Field(default="127.0.0.1:7233", description="host:port of the Temporal frontend.")
    temporal_namespace: str = Field(default="default")
    temporal_ui_port: int = Field(default=8233, description="Web UI port of the embedded dev server.")
    port_release_wait_s: float = Field(
        default=30.0,
        ge=0,
        description="How long `poolctl dev up` waits for a port of the dev stack that another process still "
        "holds (a server still stopping) before it gives up, naming the holder.",
    )
    temporal_api_key: str | None = Field(
        default=None, repr=False, description="API key for Temporal Cloud (enables TLS)."
    )
    temporal_tls: bool = Field(
        default=False, description="Connect with TLS; implied by an API key or any temporal_tls_* setting."
    )
    temporal_tls_server_ca_cert: str | None = Field(
        default=None,
        description="CA certificate(s) the server's certificate chains to: a PEM file path or the PEM text; "
        "default: the system's trusted roots.",
    )
    temporal_tls_client_cert: str | None = Field(
        default=None, description="Client certificate for mutual TLS: a PEM file path or the PEM text."
    )
    temporal_tls_client_key: str | None = Field(
        default=None, description="Private key of the client certificate: a PEM file path or the PEM text."
    )
    temporal_tls_server_name: str | None = Field(
        default=None,
        description="Name the server's certificate is checked against (and sent as SNI) when it is not the "
        "host of temporal_address.",
    )
    task_queue: str = Field(default="poolctl")
    team: str = Field(default="default", description="Team used when a spec or command names none.")
    scale_attempts: int = Field(
        default=3, ge=1, description="Attempts per provision/terminate call before a scaling fails."
    )
    reconcile_interval_s: float = Field(
        default=30.0, gt=0, description="How often a pool re-checks its size."
    )
    retry_initial_interval_s: float = Field(
        default=1.0, gt=0, description="First retry delay of provider calls (doubles)."
    )
    activity_timeout_s: float = Field(
        default=60.0, gt=0, description="Longest a single provider call may take."
    )
    error_retry_initial_s: float = Field(
        default=30.0,
        gt=0,
        le=86_400,
        description="A pool in error tries its scaling again after this long, then twice as long each time.",
    )
    error_retry_max_s: float = Field(
        default=600.0, gt=0, le=86_400, description="Longest wait between two tries of a pool in error."
    )
    drift_interval_s: float = Field(
        default=60.0,
        ge=0,
        le=86_400,
        description="How often a pool compares its members with the provider's list (drift reconcile); 0: never.",
    )
    health_lease_s: float = Field(
        default=3600.0, gt=0, description="Longest one probe-loop activity runs before it is renewed."
    )
    health_heartbeat_timeout_s: float = Field(
        default=30.0, gt=0, description="A probe loop silent this long is retried elsewhere."
    )
    policy_lease_s: float = Field(
        default=3600.0,
        ge=60,
        description="Longest one policy evaluation loop (an activity) runs before the policy renews it.",
    )
    history_budget: int = Field(
        default=2000,
        ge=100,
        description="Events after which a long-lived workflow (pool, policy, health check) continues-as-new. "
        "The check runs between turns of its loop, so a run's history stays within this plus one turn: pool "
        "+40 (a turn scaling by up to 3 servers), policy +35, health check +25 (docs/reliability.md).",
    )
    balancer_token: str = Field(
        default="",
        repr=False,
        description="Bearer token of the built-in balancers' admin endpoints; default: generated once into "
        "<state_dir>/balancer.token (see poolctl.balancer.credentials).",
    )
    worker_max_cached_workflows: int = Field(
        default=10_000, ge=1, description="Workflows a worker keeps in memory (>= its live entity workflows)."
    )
    worker_max_concurrent_activities: int = Field(
        default=10_000,
        ge=1,
        description="Activities one worker runs at once; each health check and each metric policy holds one "
        "(its probe or evaluation loop): at least the checks plus the policies it runs, with room to spare.",
    )
    worker_gc_full_every_s: float = Field(
        default=3600.0,
        ge=0,
        description="How often the worker's garbage collector scans its whole heap; in between, what survived a "
        "full collection is frozen and not scanned again (poolctl.gc_pacing): a worker of 5,000 checks stalled "
        "~2 s every ~40 s otherwise. 0: Python's default collector.",
    )
    payload_key: SecretStr | None = Field(
        default=None,
        description="Key (32 random bytes, base64) that encrypts every Temporal payload (AES-256-GCM); default: "
        "generated once into <state_dir>/payload.key when Temporal is local (see poolctl.payload_codec).",
    )
    payload_keys_old: SecretStr | None = Field(
        default=None,
        description="Earlier payload keys (comma- or space-separated): they still decrypt, never encrypt.",
    )
    team_token: SecretStr | None = Field(
        default=None,
        description="This caller's team token (`TEAM:SECRET`, from `poolctl team token TEAM`): the CLI acts for "
        "that team only. Unset: the CLI acts as an operator when it holds the team auth key (the dev stack).",
    )
    team_auth_key: SecretStr | None = Field(
        default=None,
        description="Key (32 random bytes, base64) that team tokens are issued and checked with; the worker's "
        "secret. Default: generated once into <state_dir>/team-auth.key when Temporal is local "
        "(see poolctl.team_auth).",
    )
    team_auth_keys_old: SecretStr | None = Field(
        default=None,
        description="Earlier team auth keys (comma- or space-separated): tokens issued under them still pass.",
    )
    team_auth_legacy_before: datetime | None = Field(
        default=None,
        description="Upgrading a running system to team checks: messages without team credentials that a "
        "workflow took before this time (ISO 8601 with zone) still count when it replays. Set it to the time of "
        "the upgrade; unset it once every workflow started before has continued-as-new or ended.",
    )
    balancer_admin_host: str = Field(
        default="127.0.0.1",
        description="Host of the built-in balancers' admin endpoints (another container's name in docker compose).",
    )
    balancer_stats_interval_s: float = Field(
        default=600.0, ge=1, description="How often the Schedule rolls balancer statistics up into the store."
    )

    retention_days: float = Field(
        default=90.0,
        gt=0,
        le=36_500,
        description="Scaling events, decision records, health transitions and balancer roll-ups older than "
        "this are removed by the weekly housekeeping Schedule.",
    )
    housekeeping_interval_s: float = Field(
        default=7 * 86_400.0, ge=60, description="How often the housekeeping Schedule runs (weekly)."
    )
    worker_metrics_port: int = Field(
        default=9464,
        ge=0,
        le=65_535,
        description="Port of the worker's Prometheus endpoint on 127.0.0.1 (0: no endpoint).",
    )
    aws_region: str | None = Field(
        default=None,
        description="AWS region of the aws (EC2) provider; default: the standard AWS configuration "
        "(AWS_REGION / AWS_DEFAULT_REGION / ~/.aws/config). Credentials always come from that chain.",
    )
    aws_endpoint_url: str | None = Field(
        default=None,
        description="EC2/CloudWatch endpoint override, e.g. a moto server in tests (http://127.0.0.1:5000).",
    )

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if bool(self.temporal_tls_client_cert) != bool(self.temporal_tls_client_key):
            raise ValueError(
                "temporal_tls_client_cert and temporal_tls_client_key go together: give both or neither"
            )
        for name in ("temporal_tls_server_ca_cert", "temporal_tls_client_cert", "temporal_tls_client_key"):
            value = getattr(self, name)
            if value and not is_pem(value) and not Path(value).is_file():
                raise ValueError(f"{name}: no such file {value!r} (give a PEM file path or the PEM text)")
        return self

    @property
    def uses_temporal_tls(self) -> bool:
        return bool(
            self.temporal_tls
            or self.temporal_api_key
            or self.temporal_tls_server_ca_cert
            or self.temporal_tls_client_cert
            or self.temporal_tls_server_name
        )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.state_dir / 'poolctl.db'}"

    def ensure_state_dir(self) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return self.state_dir

    def as_env(self) -> dict[str, str]:
        """Every setting that has a value, as the `POOLCTL_<NAME>` variable that gives it back (secrets in
        clear, datetimes in ISO 8601): what a process poolctl starts (the dev stack's worker, a built-in
        balancer) needs to run with these settings rather than with its defaults (a second stack's worker
        would otherwise bind the default metrics port of the first)."""
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, datetime):
                value = value.isoformat()
            env[f"POOLCTL_{name.upper()}"] = str(value)
        return env


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
