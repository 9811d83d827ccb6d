"""When a long-lived activity's heartbeats reach the Temporal server: one throttle per activity.

The SDK throttles an activity's heartbeats to one per 0.8 x its heartbeat timeout, worker-wide and with no
way for the activity to send one *now*. But a heartbeat's reply is also how a running activity learns
that its workflow cancelled it: a policy's evaluation loop (`policy_loop`) must hear of a pause, resume or
new spec before its next evaluation, not up to 1.6 intervals later. So the worker lowers the SDK's
throttle to `SDK_THROTTLE_S` (`worker.build_worker`) and each long-lived loop paces its own heartbeats here:

- `beat(details)`: at most one send per `min_gap_s`; a beat inside the gap is held (the newest wins) and
  sent when the gap ends (a trailing send, as the SDK's throttle does), so the server hears from a healthy
  loop every `min_gap_s` however its beats fall;
- `now(details)`: send at once (a held beat is replaced): the policy loop's check just before each
  evaluation, and a decision it is about to return.

`details` may be any object: `encode` turns it into the heartbeat's payload at send time only (a held
beat that is replaced costs nothing). Plain code with an injected `send` and `clock`: testable without
Temporal (tests/test_heartbeats.py). Must be used from inside a running asyncio loop (the trailing send
is a `loop.call_later`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

# The worker's `max_heartbeat_throttle_interval` (seconds): low, so the loops' own pacing decides (the
# SDK still holds a send that comes within this of the activity's previous one: at 1 s, a 1 s policy's
# check before each evaluation was held until the evaluation had begun).
SDK_THROTTLE_S = 0.1

SendFn = Callable[[Any], None]


class HeartbeatPacer:
    """One activity's heartbeats: at most one per `min_gap_s` seconds (> 0), the held one sent when the gap
    ends, or any one at once with `now`. `send` receives `encode(details)`; `clock` is monotonic seconds."""

    def __init__(
        self,
        send: SendFn,
        min_gap_s: float,
        *,
        encode: Callable[[Any], Any] = lambda d: d,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not min_gap_s > 0:
            raise ValueError(f"min_gap_s must be > 0, got {min_gap_s!r}")
        self._send = send
        self._encode = encode
        self._clock = clock
        self.min_gap_s = min_gap_s
        self._sent_at = -float("inf")
        self._held: tuple[Any] | None = None  # a one-tuple, so None details can be held too
        self._timer: asyncio.TimerHandle | None = None
        self.sent = 0

    def beat(self, details: Any) -> None:
        """Send `details` now if the last send is `min_gap_s` old, else hold them for the gap's end."""
        wait = self._sent_at + self.min_gap_s - self._clock()
        if wait <= 0:
            self.now(details)
            return
        self._held = (details,)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(wait, self._trailing)

    def now(self, details: Any) -> None:
        """Send `details` at once; a held beat is dropped (these details are newer)."""
        self._held = None
        self._cancel_timer()
        self._sent_at = self._clock()
        self.sent += 1
        self._send(self._encode(details))

    def flush(self) -> None:
        """Send a held beat now, if there is one (the activity is about to end or be retried)."""
        if self._held is not None:
            self.now(self._held[0])

    def close(self) -> None:
        """Drop a held beat and its timer (the activity returned its state as its result)."""
        self._held = None
        self._cancel_timer()

    def _trailing(self) -> None:
        self._timer = None
        if self._held is not None:
            self.now(self._held[0])

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def as_json(details: Any) -> Any:
    """Heartbeat details as plain JSON: a pydantic model dumped (`mode="json"`), anything else as it is."""
    return details.model_dump(mode="json") if isinstance(details, BaseModel) else details


def activity_pacer(fallback_gap_s: float) -> HeartbeatPacer:
    """A pacer for the running activity (call inside one): one send per 0.8 x its heartbeat timeout, the
    pace the SDK's own throttle kept, or per `fallback_gap_s` seconds when it was started without one;
    details are sent `as_json`."""
    from temporalio import activity

    timeout = activity.info().heartbeat_timeout
    gap = 0.8 * timeout.total_seconds() if timeout else fallback_gap_s
    return HeartbeatPacer(activity.heartbeat, gap, encode=as_json)


__all__ = ["SDK_THROTTLE_S", "HeartbeatPacer", "activity_pacer", "as_json"]
