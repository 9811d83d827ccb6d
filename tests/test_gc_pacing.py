"""The worker's GC pacing (poolctl.gc_pacing): survivors of a full collection are frozen, the whole heap is
scanned again once per period, and uninstall leaves the collector as it was."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from poolctl.gc_pacing import GcPacer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def pacer() -> Iterator[GcPacer]:
    p = GcPacer(60.0, clock=Clock())
    p.install()
    yield p
    p.uninstall()


def test_install_freezes_start_up_and_uninstall_unfreezes(pacer: GcPacer) -> None:
    assert gc.get_freeze_count() > 0
    assert pacer.on_gc in gc.callbacks
    pacer.uninstall()
    assert gc.get_freeze_count() == 0 and pacer.on_gc not in gc.callbacks
    pacer.install()  # for the fixture's uninstall


def test_full_collection_survivors_are_frozen_and_young_collections_change_nothing(pacer: GcPacer) -> None:
    kept = [Cycle() for _ in range(1000)]
    frozen = gc.get_freeze_count()
    gc.collect(0)
    gc.collect(1)
    assert gc.get_freeze_count() == frozen and pacer.frozen_after == 0
    gc.collect(2)
    assert pacer.frozen_after == 1
    assert gc.get_freeze_count() >= frozen + len(kept)
    assert not any(isinstance(o, Cycle) for o in gc.get_objects())  # not scanned by later collections


def test_whole_heap_pass_once_per_period_frees_cycles_that_died_frozen(pacer: GcPacer) -> None:
    clock = pacer._clock
    assert isinstance(clock, Clock)
    doomed = [Cycle() for _ in range(1000)]
    gc.collect()  # frozen now
    del doomed  # reference cycles: refcounting cannot free them, and frozen they are not scanned
    gc.collect()
    assert sum(isinstance(o, Cycle) for o in gc.get_objects()) == 0  # frozen objects are not listed
    frozen = gc.get_freeze_count()
    assert pacer.unfrozen == 0
    clock.now += 60  # the period is over: the next full collection unfreezes ...
    gc.collect()
    assert pacer.unfrozen == 1 and gc.get_freeze_count() == 0
    gc.collect()  # ... and the one after scans the whole heap, frees the dead cycles and freezes again
    assert pacer.frozen_after >= 2
    assert gc.get_freeze_count() <= frozen - 1000


def test_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="full_every_s must be > 0"):
        GcPacer(0)
