"""Terminal output helpers: Rich console, tables, JSON for scripts, and error exits."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, NoReturn

import typer
from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from poolctl.domain.errors import printable
from poolctl.domain.redaction import redact

console = Console()
err_console = Console(stderr=True)

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
    """ISO 8601 with the zone. A naive datetime is UTC: poolctl stores UTC, and SQLite hands it back
    without its zone (PostgreSQL keeps it)."""
    return (ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)).isoformat()


def _zoned(value: Any) -> Any:
    """`value` with every datetime (also inside models, dicts and lists) turned into `utc_iso` text."""
    if isinstance(value, datetime):
        return utc_iso(value)
    if isinstance(value, BaseModel):
        return _zoned(value.model_dump(mode="python"))
    if isinstance(value, dict):
        return {k: _zoned(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_zoned(v) for v in value]
    return value


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c)
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
