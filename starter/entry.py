"""The `poolctl` console script's first frame: Ctrl-C is one line from the very first instant.

Loading the CLI (Typer, Rich, pydantic, the Temporal SDK) takes a second or two; a Ctrl-C in that time
would otherwise print a `KeyboardInterrupt` traceback from some import. Until the CLI is loaded, SIGINT
prints one line and exits 130 (nothing has been sent anywhere yet); after that the commands' own handling
applies (`starter.runner`), and a Ctrl-C that Typer turns into a silent exit 130 gets its line here, as
does one while Typer still builds the command line from the commands' signatures (before any command runs,
outside Click's own handling; it takes a noticeable time on a loaded machine)."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

EXIT_INTERRUPTED = 130


def _interrupted_while_loading(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write("interrupted: poolctl was still starting; nothing was sent\n")
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def _silent_interrupt(e: SystemExit) -> bool:
    """Did Typer turn a KeyboardInterrupt into this exit 130 without a word (outside `starter.runner`)?

    Typer raises its `Exit(130)` *from* the KeyboardInterrupt (its cause). A command that said its own
    line (`output.fail(..., 130)` in an `except KeyboardInterrupt:` block) raised its Exit *during* it (its
    context only): that one has been said and gets no second line."""
    if e.code != EXIT_INTERRUPTED:
        return False
    cause = e.__context__
    while cause is not None and type(cause).__name__ == "Exit":  # click's / typer's Exit
        cause = cause.__cause__
    return isinstance(cause, KeyboardInterrupt)


def main() -> None:
    signal.signal(signal.SIGINT, _interrupted_while_loading)
    from poolctl.starter import cli

    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        cli.main()
    except KeyboardInterrupt:  # only Typer's building of the command escapes Click's handling of Ctrl-C
        sys.stderr.write("interrupted: poolctl was still starting; nothing was sent\n")
        sys.stderr.flush()
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit as e:
        if _silent_interrupt(e):
            sys.stderr.write("interrupted\n")
        raise
