"""The compiled hot path is used only when built from the current sources (balancer/native.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from poolctl.balancer import native


@pytest.fixture
def build_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(native, "NATIVE_DIR", tmp_path)
    monkeypatch.setattr(native, "STAMP", tmp_path / "SOURCES.sha256")
    monkeypatch.delenv(native.DISABLE_ENV, raising=False)
    return tmp_path


def test_a_build_of_the_current_sources_goes_first_on_the_package_path(build_dir: Path) -> None:
    native.STAMP.write_text(native.source_digest() + "\n")
    path = ["/pkg/balancer"]
    assert native.enable(path) is True
    assert path == [str(build_dir), "/pkg/balancer"]
    assert native.enable(path) is True and path.count(str(build_dir)) == 1  # idempotent


def test_a_stale_or_missing_build_is_never_used(build_dir: Path) -> None:
    path = ["/pkg/balancer"]
    assert native.enable(path) is False  # nothing built
    native.STAMP.write_text("0" * 64 + "\n")  # built from other sources (an edit since)
    assert native.enable(path) is False
    assert path == ["/pkg/balancer"]


def test_pure_python_can_be_forced(build_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    native.STAMP.write_text(native.source_digest() + "\n")
    monkeypatch.setenv(native.DISABLE_ENV, "1")
    path = ["/pkg/balancer"]
    assert native.enable(path) is False
    assert path == ["/pkg/balancer"]


def test_the_digest_covers_the_compiled_module(monkeypatch: pytest.MonkeyPatch) -> None:
    before = native.source_digest()
    monkeypatch.setattr(native, "SOURCES", ("balancer/http1.py",))
    assert native.source_digest() != before  # each listed source counts
