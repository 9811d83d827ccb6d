"""Terminal output helpers: Rich console, tables, JSON for scripts, and error exits."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, NoReturn

import typer
from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from rich import box
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.table import Table

from poolctl.domain.errors import printable
from poolctl.domain.redaction import redact

PIPE_WIDTH = 200
"""Columns of the output when it is not a terminal (a pipe, a file, CI) and COLUMNS is not set. Rich would
use 80 there and cut tables to fit; a log or a `grep` wants whole lines instead."""


class WideWhenPiped(Console):
    """A Rich console as wide as the terminal, or `PIPE_WIDTH` columns when the output is not a terminal
    (COLUMNS, when set, wins in both cases)."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self.is_terminal or "COLUMNS" in self._environ:
            return size
        return ConsoleDimensions(max(size.width, PIPE_WIDTH), size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


console = WideWhenPiped()
err_console = WideWhenPiped(stderr=True)

# Exit codes (README "Exit codes"): 0 done, 2 bad input or refused, 3 timed out waiting, 130 Ctrl-C,
# 1 anything else.
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_TIMED_OUT = 3
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print `message` on stderr (control characters escaped, line by line) and exit with `code`."""
    safe = "\n".join(printable(line) for line in message.split("\n"))
    err_console.print(f"[bold red]error:[/] {escape(safe)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    """Print `data` (dicts, lists, pydantic models, datetimes, ...) as JSON for scripts, with every secret
    masked (`poolctl.domain.redaction.redact`) and every timestamp with its zone (ISO 8601, `+00:00` for
    UTC: see `utc_iso`)."""
    typer.echo(json.dumps(to_jsonable_python(redact(_zoned(data)), fallback=str), indent=2, sort_keys=False))


def utc_iso(ts: datetime) -> str:
    """ISO 8601 in UTC with the zone (`+00:00`). A naive datetime is UTC: poolctl stores UTC, and SQLite
    hands it back without its zone (PostgreSQL keeps it)."""
    return (ts.astimezone(UTC) if ts.tzinfo is not None else ts.replace(tzinfo=UTC)).isoformat()


_ISO_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})?")
"""A whole string that is a timestamp: what pydantic's JSON mode writes (`...Z`), which is how nested
records (a decision's `at`, its inputs' `at`) reach `print_json` from the store's JSON columns."""


def _zoned(value: Any) -> Any:
    """`value` with every datetime (also inside models, dicts and lists, and timestamps already written
    as text) turned into `utc_iso` text: one format for every `--json` output."""
    if isinstance(value, datetime):
        return utc_iso(value)
    if isinstance(value, str) and _ISO_TIMESTAMP.fullmatch(value):
        try:
            return utc_iso(datetime.fromisoformat(value))
        except ValueError:
            return value
    if isinstance(value, BaseModel):
        return _zoned(value.model_dump(mode="python"))
    if isinstance(value, dict):
        return {k: _zoned(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_zoned(v) for v in value]
    return value


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> Table:
    """A table of `rows` (None shows as empty) for `console.print`. When the terminal is too narrow, long
    cells (identifiers, addresses, paths, URLs, commands) fold onto the next line whole, never cut with an
    ellipsis; short columns keep their values on one line."""
    t = Table(
        title=title,
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),
    )
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    return t


def ago(ts: datetime | None, now: datetime | None = None) -> str:
    if ts is None:
        return ""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    secs = int((now - ts).total_seconds())
    if secs < 60:
        return f"{secs}s ago"
    if secs < 3600:
        return f"{secs // 60}m ago"
    if secs < 86400:
        return f"{secs // 3600}h ago"
    return f"{secs // 86400}d ago"
