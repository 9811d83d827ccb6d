"""Waiting for an answer only a worker can give: say so after a few seconds, give up at the command's
deadline (`--timeout`) with one line and exit code 3."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

from poolctl.domain.errors import PoolctlError
from poolctl.temporal_client import release_task

T = TypeVar("T")

NOTICE_AFTER_S = 3.0
"""How long a call may go unanswered before the command says it is waiting for a worker."""
DEFAULT_TIMEOUT_S = 60.0
"""Default of every command's `--timeout`: the longest it waits for a worker (and for a pool to settle)."""
TIMEOUT_HELP = "Seconds to wait for a worker to answer; exit code 3 when they run out."
"""`--timeout`'s help on commands that only wait for a worker's answer (no --wait)."""


class WaitTimedOut(PoolctlError):
    """The command's deadline passed while it waited (exit code 3). The message is one line."""


@dataclass
class Deadline:
    """One command's waiting budget: the task queue its worker polls, when it gives up (monotonic
    seconds) and where the waiting notice goes. `noticed` keeps the notice to one per command."""

    task_queue: str
    timeout_s: float
    say: Callable[[str], None]
    notice_after_s: float = NOTICE_AFTER_S
    started: float = field(default_factory=time.monotonic)
    noticed: bool = False

    @property
    def remaining_s(self) -> float:
        return max(0.0, self.started + self.timeout_s - time.monotonic())

    def waiting_line(self) -> str:
        return f"waiting for a worker on task queue {self.task_queue} (is the worker running? poolctl dev status)"

    def timed_out(self, what: str, *, sends: bool = False) -> WaitTimedOut:
        return WaitTimedOut(
            f"timed out after {self.timeout_s:g}s {what} on task queue {self.task_queue} "
            "(is the worker running? poolctl dev status; or raise --timeout)"
            + (SENT_CARRIES_ON if sends else "")
        )


SENT_CARRIES_ON = "; what it already sent may still be done when a worker answers (see poolctl status)"
"""What a timed-out command that changes something adds: a signal it sent, or an update the server admitted,
stays with Temporal, so a pool may still be deleted (or a server added) once a worker polls again; an
admitted update that no worker accepted can also be dropped by the server, hence "may"."""


_deadline: ContextVar[Deadline | None] = ContextVar("poolctl_deadline", default=None)


@contextlib.contextmanager
def deadline(
    task_queue: str, timeout_s: float = DEFAULT_TIMEOUT_S, say: Callable[[str], None] = print
) -> Iterator[Deadline]:
    """Set the budget that `for_worker` and `remaining_s` use for the code inside the block."""
    d = Deadline(task_queue=task_queue, timeout_s=timeout_s, say=say)
    token = _deadline.set(d)
    try:
        yield d
    finally:
        _deadline.reset(token)


def current() -> Deadline | None:
    return _deadline.get()


def remaining_s(default: float = DEFAULT_TIMEOUT_S) -> float:
    """Seconds left of the current command's budget (`default` outside any `deadline` block)."""
    d = _deadline.get()
    return default if d is None else d.remaining_s


async def for_worker(call: Awaitable[T], what: str = "waiting for a worker", *, sends: bool = False) -> T:
    """Await `call` (an update, a query, a workflow result: anything a worker must answer) within the
    current command's deadline. After `notice_after_s` without an answer it says, once, that it waits for
    a worker on the task queue; when the deadline passes it cancels the call and raises `WaitTimedOut`
    (`what` completes the message: "timed out after 5s waiting for ..."; `sends`: `call` sends a change,
    which the message says still happens). Outside a `deadline` block the call is simply awaited."""
    d = _deadline.get()
    if d is None:
        return await call
    task = asyncio.ensure_future(call)
    try:
        if not d.noticed:
            done, _ = await asyncio.wait({task}, timeout=min(d.notice_after_s, d.remaining_s))
            if not done and d.remaining_s > 0:
                d.noticed = True
                d.say(d.waiting_line())
        done, _ = await asyncio.wait({task}, timeout=d.remaining_s)
        if not done:
            raise d.timed_out(what, sends=sends)
        return task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
        release_task(task)
