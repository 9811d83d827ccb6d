"""Running one command's async body: an event loop, a Temporal runtime of its own shut down before the loop
closes (so the process always exits cleanly), the command's waiting deadline, and Ctrl-C as one line."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from poolctl.settings import get_settings
from poolctl.starter import waiting
from poolctl.starter.output import EXIT_INTERRUPTED, EXIT_TIMED_OUT, err_console, fail
from poolctl.temporal_client import clear_frames, command_runtime

T = TypeVar("T")


class Interrupted(Exception):
    """Ctrl-C (SIGINT) stopped the command; its Temporal calls were cancelled and the runtime shut down."""


def run_async(
    make: Callable[[], Awaitable[T]],
    *,
    task_queue: str,
    timeout_s: float = waiting.DEFAULT_TIMEOUT_S,
    say: Callable[[str], None] = print,
) -> T:
    """Run `make()` on a fresh event loop and return its result.

    Inside, clients from `poolctl.temporal_client.connect` use a runtime that is shut down (after the
    loop's other tasks are cancelled) before the loop closes, and `waiting.for_worker` uses a deadline of
    `timeout_s` on `task_queue`, saying its notice through `say`. Exceptions of the body propagate
    unchanged once everything is closed (the frames they reference are cleared, so no client outlives the
    loop); Ctrl-C becomes `Interrupted`."""

    async def main() -> T:
        async with command_runtime():
            with waiting.deadline(task_queue, timeout_s, say):
                try:
                    return await make()
                except BaseException as e:
                    clear_frames(e)
                    raise

    try:
        return asyncio.run(main())
    except KeyboardInterrupt as e:  # asyncio.run cancelled the body first, then raised this
        raise Interrupted("interrupted") from e


def run_command(make: Callable[[], Awaitable[T]], timeout_s: float = waiting.DEFAULT_TIMEOUT_S) -> T:
    """`run_async` for a `poolctl` command: the task queue from the settings, notices on stderr, and a
    timeout or Ctrl-C turned into one line with exit code 3 or 130. Other errors propagate."""
    try:
        return run_async(
            make,
            task_queue=get_settings().task_queue,
            timeout_s=timeout_s,
            say=lambda m: err_console.print(m, highlight=False, soft_wrap=True),
        )
    except waiting.WaitTimedOut as e:
        fail(str(e), EXIT_TIMED_OUT)
    except Interrupted:
        fail(
            "interrupted: what was already sent to Temporal carries on (see poolctl status)", EXIT_INTERRUPTED
        )
