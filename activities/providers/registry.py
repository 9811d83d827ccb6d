"""Provider drivers by name: `get_provider("local", state_dir)`; unknown names raise ProviderConfigError."""

from __future__ import annotations

import threading
from pathlib import Path

from poolctl.activities.providers.base import Provider, ProviderConfigError
from poolctl.activities.providers.fake import FakeProvider
from poolctl.activities.providers.local import LocalProvider
from poolctl.activities.providers.local import kill_all_local_servers as _kill_all

PROVIDER_NAMES = ("local", "fake")

_cache: dict[tuple[str, Path], Provider] = {}
_cache_lock = threading.Lock()


def get_provider(name: str, state_dir: Path) -> Provider:
    """The (cached, one per name and state dir) provider driver called `name`."""
    key = (name, Path(state_dir).resolve())
    with _cache_lock:
        provider = _cache.get(key)
        if provider is None:
            if name == "local":
                provider = LocalProvider(key[1])
            elif name == "fake":
                provider = FakeProvider()
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
