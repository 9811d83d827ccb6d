"""Secrets poolctl generates for the embedded dev stack and keeps as files in the state directory (mode 0600):
the built-in balancers' admin token, the payload encryption key and the team auth key; and the one rule by
which a key is found (`key_texts`): the setting, else the state dir's file, generated only for a local
Temporal."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from poolctl.domain.addresses import is_loopback_host


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


def temporal_is_local(address: str) -> bool:
    """True when `address` (HOST:PORT) is a loopback address: the embedded dev stack's Temporal."""
    return is_loopback_host(address.rpartition(":")[0] or "127.0.0.1")


@dataclass(frozen=True)
class KeyText:
    """A key as found, before parsing: its text and where it came from (a setting's name or a file path),
    for the parser's error message."""

    text: str
    where: str


def key_texts(
    *,
    configured: SecretStr | None,
    configured_name: str,
    old: SecretStr | None,
    old_name: str,
    path: Path,
    temporal_address: str,
    new_text: Callable[[], str],
    missing: Callable[[], Exception],
    keep_replaced_file: bool,
) -> tuple[KeyText, list[KeyText]]:
    """The current key and the older, verify- or decrypt-only keys of one secret:

    1. current: the setting `configured_name` when set; else the file `path`, generated (`new_text()`) on
       first use only when Temporal is on a loopback address (the dev stack), because a production client
       and worker on two hosts would each generate their own and could not understand each other;
    2. older: the file's key when the setting replaced it and `keep_replaced_file`, then each item of the
       setting `old_name` (comma- or space-separated).

    Raises `missing()` when there is no setting, no file and Temporal is not local. Does not parse."""
    current_text = configured.get_secret_value().strip() if configured is not None else ""
    older: list[KeyText] = []
    if current_text:
        current = KeyText(current_text, configured_name)
        if keep_replaced_file and path.exists():
            older.append(KeyText(path.read_text(), str(path)))
    elif temporal_is_local(temporal_address) or path.exists():
        current = KeyText(read_or_create_secret_file(path, new_text), str(path))
    else:
        raise missing()
    if old is not None:
        older.extend(KeyText(item, old_name) for item in old.get_secret_value().replace(",", " ").split())
    return current, older
