"""Ctrl-C gets exactly one line: the console script adds `interrupted` only to the exit 130 that Typer
made of a KeyboardInterrupt without a word, not to a command's own `error: interrupted: ...` exit
(`poolctl dev up` / `dev down` say what state the stack may be in)."""

from __future__ import annotations

import pytest
import typer

from poolctl.starter.entry import _silent_interrupt
from poolctl.starter.output import fail


def _exit_of(raise_exit) -> SystemExit:  # type: ignore[no-untyped-def]
    """The SystemExit that Typer's standalone mode makes of the Exit `raise_exit()` raises."""
    try:
        try:
            raise_exit()
        except typer.Exit as e:
            raise SystemExit(e.exit_code)  # noqa: B904 - as typer.core does: sys.exit inside its `except Exit`
    except SystemExit as e:
        return e
    raise AssertionError("no exit")


def _typer_silent() -> None:
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as e:
        raise typer.Exit(130) from e  # typer.core's own handling


def _command_said_it() -> None:
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        fail("interrupted: the dev stack may be partly up", 130)


def test_typers_silent_exit_gets_the_line():
    assert _silent_interrupt(_exit_of(_typer_silent))


def test_a_command_that_said_interrupted_gets_no_second_line(capsys: pytest.CaptureFixture[str]):
    assert not _silent_interrupt(_exit_of(_command_said_it))
    assert capsys.readouterr().err.count("interrupted") == 1


def test_other_exits_get_nothing():
    def bad_input() -> None:
        raise typer.Exit(2)

    assert not _silent_interrupt(_exit_of(bad_input))
