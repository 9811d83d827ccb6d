"""Terminal output helpers: Rich console, tables, JSON for scripts, and error exits."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from poolctl.domain.errors import printable
from poolctl.domain.redaction import redact

console = Console()
err_console = Console(stderr=True)

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print `message` on stderr (control characters escaped, line by line) and exit with `code`."""
    safe = "\n".join(printable(line) for line in message.split("\n"))
    err_console.print(f"[bold red]error:[/] {escape(safe)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    """`data` as JSON for scripts, with every secret masked (`poolctl.domain.redaction.redact`)."""
    typer.echo(json.dumps(redact(data), indent=2, default=_default, sort_keys=False))


def _default(o: Any) -> Any:
    if isinstance(o, datetime):
        return o.isoformat()
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    return str(o)


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
    from datetime import UTC

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
