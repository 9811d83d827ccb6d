"""Error types shared by every layer: what went wrong is a type, not a string to compare."""

from __future__ import annotations


class PoolctlError(Exception):
    """Base of poolctl's own errors."""


class SpecError(PoolctlError):
    """A spec file is malformed or invalid. `problems` lists (location, message) pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        prefix = f"{source}: " if source else ""
        lines = [f"{prefix}{loc}: {msg}" if loc else f"{prefix}{msg}" for loc, msg in problems]
        super().__init__("\n".join(lines))


class NotFoundError(PoolctlError):
    """A named pool, policy, balancer or server does not exist."""


# Error type names used with temporalio ApplicationError(type=...). Kept as constants so
# workflows (which must not import drivers) and activities agree on them.
PROVIDER_QUOTA_ERROR = "ProviderQuotaError"
PROVIDER_CONFIG_ERROR = "ProviderConfigError"
PROVIDER_ERROR = "ProviderError"
INVALID_SPEC_ERROR = "InvalidSpec"
PROBE_CONFIG_ERROR = "ProbeConfigError"
NON_RETRYABLE_ERROR_TYPES = [
    PROVIDER_QUOTA_ERROR,
    PROVIDER_CONFIG_ERROR,
    INVALID_SPEC_ERROR,
    PROBE_CONFIG_ERROR,
]
