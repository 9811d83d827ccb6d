"""When the worker's garbage collector scans its whole heap: rarely, so a full collection does not stall
every probe loop every few tens of seconds.

A worker of thousands of checks holds millions of GC-tracked objects (5,000 checks: ~1.7 M, ~1 GB). CPython
3.11 scans them all in a full (generation 2) collection, holding the GIL and so the event loop: measured
~1.6-2.1 s per full collection, one every ~40 s at a 5 s probe interval (docs/benchmarks.md), so probes due
meanwhile were late by up to 2 s and probes in flight passed their timeout.

`GcPacer` freezes (`gc.freeze`) what survives each full collection: later full collections scan only what
was promoted since (~0.1 M objects at 5,000 checks), and once every `full_every_s` it unfreezes everything
first, so one full collection then scans the whole heap and frees any cycle that became garbage among
frozen objects (a frozen object is still freed when its last reference goes; only frozen reference
cycles wait for that collection). Freezing right after a full collection leaves no young garbage behind:
the collection has just emptied the younger generations.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

__all__ = ["GcPacer"]


class GcPacer:
    """Freeze the survivors of each full collection; unfreeze once every `full_every_s` seconds (> 0).

    `install()` collects, freezes what start-up left (modules, classes: never garbage) and hooks into
    `gc.callbacks`; `uninstall()` unhooks and unfreezes. `clock` is monotonic seconds. Counters for logs
    and tests: `frozen_after` (full collections followed by a freeze), `unfrozen` (whole-heap passes
    prepared)."""

    def __init__(self, full_every_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not full_every_s > 0:
            raise ValueError(f"full_every_s must be > 0, got {full_every_s!r}")
        self.full_every_s = full_every_s
        self._clock = clock
        self._next_whole_heap = clock() + full_every_s
        self.frozen_after = 0
        self.unfrozen = 0
        self._installed = False

    def install(self) -> None:
        if self._installed:
            return
        gc.collect()
        gc.freeze()
        gc.callbacks.append(self.on_gc)
        self._installed = True
        self._next_whole_heap = self._clock() + self.full_every_s

    def uninstall(self) -> None:
        if not self._installed:
            return
        gc.callbacks.remove(self.on_gc)
        gc.unfreeze()
        self._installed = False

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """`gc.callbacks` hook: after a full collection, freeze its survivors, or unfreeze everything when
        the next whole-heap pass is due (the next full collection then scans it all and freezes again)."""
        if phase != "stop" or info.get("generation") != 2:
            return
        now = self._clock()
        if now >= self._next_whole_heap:
            self._next_whole_heap = now + self.full_every_s
            gc.unfreeze()
            self.unfrozen += 1
        else:
            gc.freeze()
            self.frozen_after += 1
