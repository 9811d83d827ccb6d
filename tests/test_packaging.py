"""What `pip install .` ships (the Dockerfile installs it so): only the `poolctl` package (nothing generic
such as `domain` at top level), its migrations and their template, and the compiled hot path of the
built-in balancer when `make native` built one beforehand (balancer/native.py uses it only while its stamp
matches the installed sources)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tracked_copy(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(
        b"\0"
    )
    for rel in filter(None, (f.decode() for f in files)):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)


def test_the_wheel_holds_only_the_poolctl_package_and_carries_a_native_build(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tracked_copy(src)
    native = src / "balancer" / "_native"  # stands in for a `make native` output (contents not loaded here)
    native.mkdir(parents=True)
    (native / "SOURCES.sha256").write_text("0" * 64 + "\n")
    (native / "http1.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\0")
    out = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = out.glob("poolctl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"poolctl"}
    assert "poolctl/domain/__init__.py" in names and "poolctl/worker.py" in names
    assert "poolctl/store/migrations/script.py.mako" in names
    assert "poolctl/balancer/_native/SOURCES.sha256" in names
    assert "poolctl/balancer/_native/http1.cpython-311-x86_64-linux-gnu.so" in names
    assert not any(n.startswith("poolctl/tests/") for n in names)
