"""Secrets poolctl generates for the embedded dev stack and keeps as files in the state directory (mode 0600):
the built-in balancers' admin token and the payload encryption key."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def read_or_create_secret_file(path: Path, make: Callable[[], str]) -> str:
    """The first line of `path`; when missing, the file is first created (mode 0600, exclusively, so a
    racing process's file wins) holding `make()`."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its value
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value
