"""Ctrl-C gets exactly one line: the console script adds `interrupted` only to the exit 130 that Typer
made of a KeyboardInterrupt without a word, not to a command's own `error: interrupted: ...` exit
(`poolctl dev up` / `dev down` say what state the stack may be in); and a Ctrl-C while Typer still builds
the command line gets the starting line too."""

from __future__ import annotations

import sys

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


def test_ctrl_c_while_typer_builds_the_command_line_prints_one_line_and_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Typer reads every command's signature after the imports, outside Click's handling of Ctrl-C: a SIGINT
    then (2 s into `poolctl dev down` on a loaded machine) was a KeyboardInterrupt traceback."""
    import typer.main

    from poolctl.starter import entry

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(typer.main, "get_command", interrupted)
    monkeypatch.setattr(sys, "argv", ["poolctl", "dev", "down"])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # Typer installs its own
    with pytest.raises(SystemExit) as e:
        entry.main()
    assert e.value.code == 130
    assert capsys.readouterr().err == "interrupted: poolctl was still starting; nothing was sent\n"
