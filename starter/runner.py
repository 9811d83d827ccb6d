"""Running one command's async body: an event loop, a Temporal runtime of its own shut down before the loop
closes (so the process always exits cleanly), the command's waiting deadline, and Ctrl-C as one line."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from temporalio.client import WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from poolctl.domain.errors import NotFoundError, SpecError
from poolctl.payload_codec import PayloadKeyError
from poolctl.settings import get_settings
from poolctl.starter import waiting
from poolctl.starter.output import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TIMED_OUT, err_console, fail
from poolctl.starter.pool_ops import RequestRefused
from poolctl.team_auth import TeamAuthError
from poolctl.temporal_client import TemporalUnreachable, clear_frames, command_runtime

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


def start_hint(address: str) -> str:
    """What to do when Temporal at `address` cannot be reached: start the dev stack when it is local."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
        return "start it with: poolctl dev up"
    return "check POOLCTL_TEMPORAL_ADDRESS and that the cluster is up"


def run_command(make: Callable[[], Awaitable[T]], timeout_s: float = waiting.DEFAULT_TIMEOUT_S) -> T:
    """`run_async` for a `poolctl` command: the task queue from the settings, notices on stderr, and every
    error an operator can meet turned into one line on stderr with the documented exit code (README "Exit
    codes"): 2 bad input or refused (`SpecError`, `RequestRefused`, `NotFoundError`), 3 timed out waiting,
    130 Ctrl-C, 1 Temporal unreachable (with how to start it) or a missing payload key, 2 a team token that
    is malformed or that the worker refuses. Other errors (bugs) propagate."""
    settings = get_settings()
    try:
        return run_async(
            make,
            task_queue=settings.task_queue,
            timeout_s=timeout_s,
            say=lambda m: err_console.print(m, highlight=False, soft_wrap=True),
        )
    except waiting.WaitTimedOut as e:
        fail(str(e), EXIT_TIMED_OUT)
    except Interrupted:
        fail(
            "interrupted: what was already sent to Temporal carries on (see poolctl status)", EXIT_INTERRUPTED
        )
    except (SpecError, NotFoundError) as e:
        fail(str(e), EXIT_BAD_INPUT)
    except RequestRefused as e:
        fail(str(e) if str(e).startswith("refused") else f"refused: {e}", EXIT_BAD_INPUT)
    except TemporalUnreachable as e:
        fail(f"{e}; {start_hint(e.address)}")
    except RPCError as e:
        if e.status != RPCStatusCode.UNAVAILABLE:
            raise
        fail(
            f"lost Temporal at {settings.temporal_address} (unavailable); {start_hint(settings.temporal_address)}"
        )
    except PayloadKeyError as e:  # a missing or wrong payload key (docs/security.md#secrets)
        fail(str(e))
    except TeamAuthError as e:  # a malformed team token or key (docs/security.md#teams)
        fail(str(e), EXIT_BAD_INPUT)
    except WorkflowQueryFailedError as e:  # what the worker's team check does to a token it did not issue
        fail(
            f"refused: the workflow failed the query ({e}): the worker refuses a team token that its key did "
            "not issue (its log says why)",
            EXIT_BAD_INPUT,
        )
