"""Where the built-in balancers' admin token comes from: the one place both sides (the balancer process and
the worker's driver) read it.

1. `POOLCTL_BALANCER_TOKEN` (settings.balancer_token), when set;
2. otherwise `<state_dir>/balancer.token`, generated (32 random bytes, mode 0600) on first use.

Admin URLs need no configuration: the admin endpoint listens on 127.0.0.1 at the spec's
`effective_admin_port` (`admin_port`, default `port + 1000`), so a worker on the same host reaches it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from poolctl.settings import Settings

TOKEN_FILE = "balancer.token"


def token_path(settings: Settings) -> Path:
    return settings.state_dir / TOKEN_FILE


def balancer_token(settings: Settings) -> str:
    """The admin bearer token (created on first use when no setting gives one)."""
    if settings.balancer_token:
        return settings.balancer_token
    path = token_path(settings)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    settings.ensure_state_dir()
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its token
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token
