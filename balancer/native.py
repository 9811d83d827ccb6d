"""The built-in balancer's optional compiled hot path: `balancer/http1.py` and `balancer/stats.py`
compiled to C by mypyc.

`make native` (`build()`) builds it into `balancer/_native/` (not in git), with
the SHA-256 of the sources it was built from. `enable(__path__)`, called by the package, puts that folder
first on the package's path only when those sources are unchanged, so a stale build never shadows an edited
module: without a build, after an edit, on another Python version, or with `POOLCTL_PURE_PYTHON=1`,
the pure-Python module runs. Same source, same behaviour; the compiled one costs about 40 % less CPU per
request (docs/benchmarks.md). Building needs mypy (the `dev` extra) and a C compiler; running needs neither.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from collections.abc import MutableSequence
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent  # balancer/
ROOT = PACKAGE_DIR.parent  # the poolctl package (the repository root)
NATIVE_DIR = PACKAGE_DIR / "_native"
STAMP = NATIVE_DIR / "SOURCES.sha256"
MODULES = ("http1", "stats")  # compiled, each on its own
# the compiled modules, and the one whose constants mypyc may have folded into them
SOURCES = ("balancer/http1.py", "balancer/stats.py", "domain/balancing.py")
DISABLE_ENV = "POOLCTL_PURE_PYTHON"


class NativeBuildError(RuntimeError):
    """mypyc or the C compiler failed: the message ends with their output."""


def source_digest() -> str:
    """SHA-256 over the sources a build depends on, the Python version and the extension suffix."""
    h = hashlib.sha256(f"{sys.version}|{sysconfig.get_config_var('EXT_SUFFIX')}".encode())
    for rel in SOURCES:
        h.update(rel.encode() + b"\0" + (ROOT / rel).read_bytes() + b"\0")
    return h.hexdigest()


def built() -> bool:
    """True when `balancer/_native/` holds a build of the current sources for this Python."""
    try:
        return STAMP.read_text().strip() == source_digest()
    except OSError:
        return False


def enable(package_path: MutableSequence[str]) -> bool:
    """Put the compiled hot path first on `package_path` (the balancer package's `__path__`) if it is
    built from the current sources and not disabled. Returns whether it did."""
    if os.environ.get(DISABLE_ENV) or not built():
        return False
    native = str(NATIVE_DIR)
    if native not in package_path:
        package_path.insert(0, native)
    return True


def active() -> bool:
    """True when the running `poolctl.balancer.http1` is the compiled one."""
    from poolctl.balancer import http1

    return not str(http1.__file__).endswith(".py")


def build() -> None:
    """Compile `MODULES` with mypyc into `balancer/_native/`. Raises NativeBuildError (with mypyc's
    output) when mypyc or the C compiler fails; the pure-Python modules keep running then."""
    import shutil
    import subprocess
    import tempfile

    digest = source_digest()
    suffix = str(sysconfig.get_config_var("EXT_SUFFIX"))
    with tempfile.TemporaryDirectory(prefix="poolctl-native-") as tmp:
        tree = Path(tmp) / "poolctl"  # a copy: mypyc writes its output beside the source it compiles
        shutil.copytree(
            ROOT,
            tree,
            ignore=shutil.ignore_patterns(
                ".*", "_native", "__pycache__", "build", "dist", "*.egg-info", "tests"
            ),
        )
        for module in MODULES:  # one at a time: each build is then a module of this package
            done = subprocess.run(
                [sys.executable, "-m", "mypyc", f"poolctl/balancer/{module}.py"],
                cwd=tmp,
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": tmp, "MYPYPATH": tmp},
            )
            if done.returncode != 0:
                output = (done.stdout + done.stderr)[-4000:]
                raise NativeBuildError(f"mypyc {module}.py failed (exit {done.returncode}):\n{output}")
        shutil.rmtree(NATIVE_DIR, ignore_errors=True)
        NATIVE_DIR.mkdir()
        for module in MODULES:
            for name in (module + suffix, module + "__mypyc" + suffix):
                if (tree / "balancer" / name).exists():
                    shutil.copy2(tree / "balancer" / name, NATIVE_DIR / name)
    STAMP.write_text(digest + "\n")
