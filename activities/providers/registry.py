"""Provider drivers by name: `get_provider("local", state_dir, settings)`; unknown names raise ProviderConfigError."""

from __future__ import annotations

import threading
from pathlib import Path

from poolctl.activities.providers.base import Provider, ProviderConfigError
from poolctl.activities.providers.ec2 import EC2Provider
from poolctl.activities.providers.fake import FakeProvider
from poolctl.activities.providers.local import LocalProvider
from poolctl.activities.providers.static import StaticProvider
from poolctl.localserver.processes import kill_all_local_servers as _kill_all
from poolctl.settings import Settings, get_settings

PROVIDER_NAMES = ("local", "fake", "aws", "static")

_cache: dict[tuple[str, Path, str | None, str | None, str | None], Provider] = {}
_cache_lock = threading.Lock()


def get_provider(name: str, state_dir: Path, settings: Settings | None = None) -> Provider:
    """The (cached) provider driver called `name`, one per name, state dir and configuration: the `aws`
    driver's region and endpoint, the `static` driver's database (its registry is the store); `settings`
    default to the process's."""
    region = endpoint = database = None
    if name == "aws":
        s = settings or get_settings()
        region, endpoint = s.aws_region, s.aws_endpoint_url
    elif name == "static":
        database = (settings or get_settings()).resolved_database_url
    key = (name, Path(state_dir).resolve(), region, endpoint, database)
    with _cache_lock:
        provider = _cache.get(key)
        if provider is None:
            if name == "local":
                provider = LocalProvider(key[1])
            elif name == "fake":
                provider = FakeProvider()
            elif name == "aws":
                provider = EC2Provider(region=region, endpoint_url=endpoint)
            elif name == "static":
                provider = StaticProvider(database)
            else:
                raise ProviderConfigError(
                    f"unknown provider {name!r}; known providers: {', '.join(PROVIDER_NAMES)}"
                )
            _cache[key] = provider
        return provider


def clear_provider_cache() -> None:
    """Forget cached drivers (tests; the fake provider's in-memory servers go with it)."""
    with _cache_lock:
        _cache.clear()


def kill_all_local_servers(state_dir: Path) -> int:
    """Stop every local server process under `state_dir` (for `poolctl dev down --purge` and
    test teardown). Blocking; returns how many processes were stopped."""
    return _kill_all(Path(state_dir))
