"""Which team a `poolctl` command acts for, from the caller's credentials, and `poolctl team token|whoami`.

With `POOLCTL_TEAM_TOKEN` set the caller is that team's: every command acts within it, its listings show
only its objects, and `--team` (or a spec's `team:`) naming another team is refused with exit code 2.
Without a token, a process that holds the team auth key (the dev stack, an operator on the worker's host)
acts as an operator: for `--team`, `POOLCTL_TEAM` or a spec's team, and its listings show every team.
This is the CLI's side only; the worker checks every message itself (`poolctl.team_interceptor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer

from poolctl.domain.pool_spec import SpecDocument
from poolctl.settings import Settings, get_settings
from poolctl.starter.output import EXIT_BAD_INPUT, console, fail
from poolctl.team_auth import TeamAuthError, TeamKeys, load_team_keys, parse_token

NO_CREDENTIALS = (
    "no team credentials: set POOLCTL_TEAM_TOKEN to your team's token (an operator issues it with "
    "`poolctl team token TEAM`), or run where the team auth key is (docs/security.md#teams)"
)


@dataclass(frozen=True)
class Caller:
    """Who runs the command: `team` when the caller holds a team token, None for an operator."""

    team: str | None
    default_team: str

    def team_for(self, requested: str | None) -> str:
        """The team a command on one team's objects acts for; raises TeamAuthError when `requested` is
        another team than the caller's."""
        if self.team is None:
            return requested or self.default_team
        if requested and requested != self.team:
            raise TeamAuthError(
                f"team {requested}: refused, your team token (POOLCTL_TEAM_TOKEN) is for team {self.team}"
            )
        return self.team

    def listing_scope(self, requested: str | None) -> str | None:
        """The team a listing shows: the caller's; for an operator `requested`, or None for every team."""
        return requested if self.team is None else self.team_for(requested)

    def documents(self, docs: list[SpecDocument]) -> list[SpecDocument]:
        """Spec documents placed in the caller's team: a document naming no team is the caller's; one
        naming another team raises TeamAuthError. An operator's documents are left as they are."""
        if self.team is None:
            return docs
        out = []
        for doc in docs:
            if "team" in doc.model_fields_set:
                self.team_for(doc.team)
                out.append(doc)
            else:
                out.append(doc.model_copy(update={"team": self.team}))
        return out


def caller(settings: Settings | None = None) -> Caller:
    """The caller the settings describe (see the module docstring); raises TeamAuthError for a malformed
    token or when there is neither a token nor the team auth key."""
    s = settings or get_settings()
    token = s.team_token.get_secret_value().strip() if s.team_token else ""
    if token:
        return Caller(team=parse_token(token)[0], default_team=s.team)
    _operator_keys(s)
    return Caller(team=None, default_team=s.team)


def _operator_keys(s: Settings) -> TeamKeys:
    try:
        return load_team_keys(s)
    except TeamAuthError as e:
        configured = s.team_auth_key is not None and s.team_auth_key.get_secret_value().strip()
        raise TeamAuthError(str(e) if configured else NO_CREDENTIALS) from None


def team_or_exit(requested: str | None) -> str:
    """`caller().team_for(requested)`, or exit 2 with the reason on one line."""
    try:
        return caller().team_for(requested)
    except TeamAuthError as e:
        fail(str(e), EXIT_BAD_INPUT)


def listing_scope_or_exit(requested: str | None) -> str | None:
    """`caller().listing_scope(requested)`, or exit 2 with the reason on one line."""
    try:
        return caller().listing_scope(requested)
    except TeamAuthError as e:
        fail(str(e), EXIT_BAD_INPUT)


def documents_or_exit(docs: list[SpecDocument]) -> list[SpecDocument]:
    """`caller().documents(docs)`, or exit 2 with the reason on one line."""
    try:
        return caller().documents(docs)
    except TeamAuthError as e:
        fail(str(e), EXIT_BAD_INPUT)


team_app = typer.Typer(
    help="Team credentials: issue a team's token, show who you act as.", no_args_is_help=True
)


@team_app.command("token")
def token(team: Annotated[str, typer.Argument(help="Team name.")]) -> None:
    """Print TEAM's token (needs the team auth key: an operator's command). Give it to the team as
    POOLCTL_TEAM_TOKEN; with it, poolctl acts within that team only."""
    s = get_settings()
    try:
        if s.team_token is not None and s.team_token.get_secret_value().strip():
            raise TeamAuthError("a caller with a team token cannot issue tokens: unset POOLCTL_TEAM_TOKEN")
        print(_operator_keys(s).issue(team))
    except TeamAuthError as e:
        fail(str(e), EXIT_BAD_INPUT)


@team_app.command("whoami")
def whoami() -> None:
    """Say which team this caller acts for (or that it is an operator)."""
    try:
        who = caller()
    except TeamAuthError as e:
        fail(str(e), EXIT_BAD_INPUT)
    if who.team is None:
        console.print(f"operator (team auth key): any team; default team {who.default_team}", highlight=False)
    else:
        console.print(f"team {who.team} (POOLCTL_TEAM_TOKEN)", highlight=False)
