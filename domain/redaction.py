"""Which values are secrets, and how output masks them: fields named like credentials (`*secret*`, `*token*`,
`*password*`, `*api_key*`, `aws_secret_access_key`, ...) and passwords inside URLs. Pure: no I/O."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

MASK = "********"

SECRET_NAME = re.compile(
    r"secret|token|passw(or)?d|passphrase|api[_-]?key|private[_-]?key|access[_-]?key|credential|authorization"
    r"|signing[_-]?key|session[_-]?key|cookie[_-]?value",
    re.IGNORECASE,
)
"""A field or option whose name matches holds a secret (names are matched, never values)."""

_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^/@:\s]*:)[^/@\s]+@", re.IGNORECASE)


def is_secret_name(name: str) -> bool:
    """True for a field or option name that holds a secret, e.g. `api_token`, `aws_secret_access_key`."""
    return bool(SECRET_NAME.search(name))


def redact(value: Any) -> Any:
    """`value` with every secret masked, for output (`--json`, tables, logs): values of secret-named
    keys become `MASK`, at any depth; `scheme://user:password@host` keeps only the user. Pydantic models
    are dumped to JSON-ready data first. The input is never changed."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: MASK if isinstance(k, str) and is_secret_name(k) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str) and "@" in value:
        return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK + "@", value)
    return value
