"""Run the fault suite (tests/faults) and print its table: fault, runs, actions lost, duplicate servers,
orphans, final state. Every count must be zero.

    .venv/bin/python bench/faults.py            # once
    .venv/bin/python bench/faults.py --runs 3   # each fault three times (a longer, more telling run)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1, help="runs of each fault (default 1)")
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/faults"]
    if args.runs > 1:
        cmd += ["--count", str(args.runs)] if _has_repeat() else []
        if not _has_repeat():
            print("pytest-repeat is not installed: running each fault once", file=sys.stderr)
    return subprocess.call(cmd, cwd=ROOT)


def _has_repeat() -> bool:
    try:
        import pytest_repeat  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
