"""`HeartbeatPacer`: one send per gap with the newest details, a held beat sent when the gap ends, `now`
at once. A fake monotonic clock; the trailing send runs on the real event loop (a 50 ms gap)."""

from __future__ import annotations

import asyncio

import pytest

from poolctl.activities.heartbeats import HeartbeatPacer


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


async def test_beats_inside_the_gap_are_held_and_the_newest_is_sent_when_it_ends() -> None:
    sent: list[object] = []
    pacer = HeartbeatPacer(sent.append, 0.05, encode=lambda d: {"n": d})
    pacer.beat(1)
    assert sent == [{"n": 1}]  # the first goes at once
    pacer.beat(2)
    pacer.beat(3)
    assert sent == [{"n": 1}]  # held
    for _ in range(100):
        if len(sent) == 2:
            break
        await asyncio.sleep(0.01)
    assert sent == [{"n": 1}, {"n": 3}]  # the newest, once, at the gap's end
    assert pacer.sent == 2


async def test_a_beat_after_the_gap_goes_at_once_and_now_replaces_a_held_one() -> None:
    clock = Clock()
    sent: list[object] = []
    pacer = HeartbeatPacer(sent.append, 10.0, clock=clock)
    pacer.beat("a")
    clock.t += 10.0
    pacer.beat("b")
    assert sent == ["a", "b"]
    clock.t += 1.0
    pacer.beat("held")
    pacer.now("check")  # e.g. the policy loop's check before an evaluation
    assert sent == ["a", "b", "check"]
    pacer.flush()
    assert sent == ["a", "b", "check"]  # nothing held any more
    clock.t += 1.0
    pacer.beat("c")
    pacer.close()
    pacer.flush()
    assert sent == ["a", "b", "check"]  # closed: the held beat is dropped


async def test_flush_sends_a_held_beat() -> None:
    clock = Clock()
    sent: list[object] = []
    pacer = HeartbeatPacer(sent.append, 10.0, clock=clock)
    pacer.beat(None)
    pacer.beat(None)  # None details can be held too
    pacer.flush()
    assert sent == [None, None]
    pacer.close()


@pytest.mark.parametrize("gap", [0.0, -1.0, float("nan")])
def test_the_gap_must_be_positive(gap: float) -> None:
    with pytest.raises(ValueError, match="min_gap_s"):
        HeartbeatPacer(lambda _: None, gap)
