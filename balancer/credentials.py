"""Where the built-in balancers' admin token comes from: the one place both sides (the balancer process and
the worker's driver) read it.

1. `POOLCTL_BALANCER_TOKEN` (settings.balancer_token), when set;
2. otherwise `<state_dir>/balancer.token`, generated (32 random bytes, mode 0600) on first use.

Admin URLs need no configuration: the admin endpoint listens on 127.0.0.1 at the spec's
`effective_admin_port` (`admin_port`, default `port + 1000`), so a worker on the same host reaches it.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from poolctl.settings import Settings
from poolctl.state_secrets import read_or_create_secret_file

TOKEN_FILE = "balancer.token"


def token_path(settings: Settings) -> Path:
    return settings.state_dir / TOKEN_FILE


def balancer_token(settings: Settings) -> str:
    """The admin bearer token (created on first use when no setting gives one)."""
    if settings.balancer_token:
        return settings.balancer_token
    return read_or_create_secret_file(token_path(settings), lambda: secrets.token_urlsafe(32))
