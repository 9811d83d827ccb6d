"""Error types shared by every layer: what went wrong is a type, not a string to compare."""

from __future__ import annotations

import unicodedata


class PoolctlError(Exception):
    """Base of poolctl's own errors."""


def printable(text: str) -> str:
    """`text` with every control or invisible format character (ESC, CR, NUL, bidi overrides, ...) written
    as a Python escape (`\\x1b`, `\\u202e`): safe to show on an operator's terminal. Newlines too."""
    if text.isprintable():
        return text
    out = []
    for c in text:
        if c == " " or unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"):
            out.append(c)
        else:
            n = ord(c)
            out.append(f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}")
    return "".join(out)


class SpecError(PoolctlError):
    """A spec file is malformed or invalid. `problems` lists (location, message) pairs, each made
    printable (control characters escaped), so a hostile spec cannot drive the operator's terminal."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        source = printable(source)
        problems = [(printable(loc), printable(msg)) for loc, msg in problems]
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
