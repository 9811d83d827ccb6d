"""Team credentials: the server-side team auth key, the team tokens issued from it, and the per-message proof
a caller puts in a Temporal header so the worker can check that the caller acts for the workflow's team.

A **team token** is `TEAM:SECRET`, SECRET = hex(HMAC-SHA256(team auth key, "poolctl-team-token/v1/" + TEAM)).
An operator issues it (`poolctl team token TEAM`, which needs the key); a caller holds only its own team's
token. Every message to a team's workflow carries a **proof** in header `poolctl-team-auth`: the team and
hex(HMAC-SHA256(SECRET, team, workflow id, kind, message name, SHA-256 of the arguments)). The worker holds
the key, recomputes SECRET for the header's team and checks the proof (`poolctl.team_interceptor`). The
token itself never travels, so a history (where headers are kept, encrypted like every payload) never
holds a credential: a proof read from a history is good only for the same message to the same workflow.
See docs/security.md#teams.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydantic_core import to_jsonable_python
from temporalio.api.common.v1 import Payload

from poolctl.domain.errors import PoolctlError
from poolctl.domain.names import NAME_RE, team_of_workflow_id
from poolctl.payload_codec import PayloadKeyError, new_key_text, parse_key
from poolctl.settings import Settings
from poolctl.state_secrets import key_texts, read_or_create_secret_file

HEADER = "poolctl-team-auth"
"""Temporal header holding a message's proof: JSON `{"team": ..., "proof": ...}`."""
KEY_FILE = "team-auth.key"
"""The dev stack's generated team auth key, `<state_dir>/team-auth.key` (mode 0600)."""
_TOKEN_TAG = b"poolctl-team-token/v1/"
_PROOF_TAG = "poolctl-team-proof/v1"


class TeamAuthError(PoolctlError):
    """A team credential is missing, malformed or names another team than the one asked for."""


def team_secret(key: bytes, team: str) -> bytes:
    """The secret half of `team`'s token under `key` (32 bytes)."""
    return hmac.new(key, _TOKEN_TAG + team.encode(), hashlib.sha256).digest()


def issue_token(key: bytes, team: str) -> str:
    """`team`'s token (`TEAM:64 hex digits`). Raises TeamAuthError for a name that is not a team name."""
    if not NAME_RE.match(team):
        raise TeamAuthError(f"team {team!r}: not a team name (lowercase letters, digits and '-')")
    return f"{team}:{team_secret(key, team).hex()}"


def parse_token(text: str, where: str = "POOLCTL_TEAM_TOKEN") -> tuple[str, bytes]:
    """(team, secret) of a token; raises TeamAuthError naming `where` when it is not `TEAM:64 hex digits`.
    Whether the token is genuine only the worker (which holds the key) can tell."""
    team, sep, secret = text.strip().partition(":")
    if not sep or not NAME_RE.match(team) or len(secret) != 64:
        raise TeamAuthError(
            f"{where}: not a team token (expected TEAM:64 hex digits from `poolctl team token`)"
        )
    try:
        return team, bytes.fromhex(secret)
    except ValueError:
        raise TeamAuthError(f"{where}: not a team token (the part after ':' is not hex)") from None


def args_digest(args: Sequence[object]) -> str:
    """SHA-256 (hex) of a message's arguments as canonical JSON: the same on the sending side (models as
    passed) and on the receiving side (the models decoded from them)."""
    text = json.dumps(to_jsonable_python(list(args)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def proof(secret: bytes, team: str, workflow_id: str, kind: str, name: str, args: Sequence[object]) -> str:
    """The proof of one message: `kind` is start, signal, update or query; `name` the signal, update or
    query name ("" for a start)."""
    text = "\n".join([_PROOF_TAG, team, workflow_id, kind, name, args_digest(args)])
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()


def header_payload(team: str, message_proof: str) -> Payload:
    return Payload(
        metadata={"encoding": b"json/plain"},
        data=json.dumps({"team": team, "proof": message_proof}, separators=(",", ":")).encode(),
    )


def read_header(payload: Payload | None) -> tuple[str, str] | None:
    """(team, proof) from a header payload, or None when it is absent or malformed."""
    if payload is None or payload.metadata.get("encoding") != b"json/plain":
        return None
    try:
        value = json.loads(payload.data)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    team, message_proof = value.get("team"), value.get("proof")
    if not isinstance(team, str) or not isinstance(message_proof, str):
        return None
    return team, message_proof


@dataclass(frozen=True)
class TeamKeys:
    """The key that issues tokens (`current`) and earlier keys whose tokens are still accepted."""

    current: bytes = field(repr=False)
    old: tuple[bytes, ...] = field(default=(), repr=False)

    def issue(self, team: str) -> str:
        return issue_token(self.current, team)

    def verify(
        self, team: str, workflow_id: str, kind: str, name: str, args: Sequence[object], got: str
    ) -> bool:
        """Is `got` the proof of this message by a holder of `team`'s token under any of the keys?"""
        return any(
            hmac.compare_digest(proof(team_secret(k, team), team, workflow_id, kind, name, args), got)
            for k in (self.current, *self.old)
        )


def key_file(settings: Settings) -> Path:
    return settings.state_dir / KEY_FILE


def ensure_dev_key(settings: Settings) -> Path:
    """Generate `<state_dir>/team-auth.key` if missing (what `poolctl dev up` does); returns its path."""
    read_or_create_secret_file(key_file(settings), new_key_text)
    return key_file(settings)


def _parse(text: str, where: str) -> bytes:
    try:
        return parse_key(text, where)
    except PayloadKeyError as e:
        raise TeamAuthError(str(e).replace(" (AES-256)", "")) from None


def load_team_keys(settings: Settings) -> TeamKeys:
    """The team auth keys from the settings, as `poolctl.payload_codec.load_keyring` reads payload keys:
    `POOLCTL_TEAM_AUTH_KEY`, else `<state_dir>/team-auth.key` (generated on first use only when Temporal
    is on a loopback address, the dev stack); `POOLCTL_TEAM_AUTH_KEYS_OLD` still verify.
    Raises TeamAuthError when there is no key or one is malformed."""
    current, old = key_texts(
        configured=settings.team_auth_key,
        configured_name="POOLCTL_TEAM_AUTH_KEY",
        old=settings.team_auth_keys_old,
        old_name="POOLCTL_TEAM_AUTH_KEYS_OLD",
        path=key_file(settings),
        temporal_address=settings.temporal_address,
        new_text=new_key_text,
        missing=lambda: TeamAuthError(
            f"no team auth key: Temporal at {settings.temporal_address} is not local, so the worker needs "
            "POOLCTL_TEAM_AUTH_KEY (32 random bytes, base64: `openssl rand -base64 32`), and a caller needs "
            "POOLCTL_TEAM_TOKEN (docs/security.md#teams)"
        ),
        keep_replaced_file=False,
    )
    return TeamKeys(_parse(current.text, current.where), tuple(_parse(k.text, k.where) for k in old))


class TeamCredentials(Protocol):
    """What a client signs its messages with."""

    def header(self, workflow_id: str, kind: str, name: str, args: Sequence[object]) -> Payload | None:
        """The `poolctl-team-auth` header for a message to `workflow_id`, or None to send none."""


@dataclass(frozen=True)
class TokenCredentials:
    """A caller's: one team's token. Signs every message as that team (the worker refuses it for another)."""

    team: str
    secret: bytes = field(repr=False)

    @classmethod
    def from_token(cls, token: str, where: str = "POOLCTL_TEAM_TOKEN") -> TokenCredentials:
        team, secret = parse_token(token, where)
        return cls(team, secret)

    def header(self, workflow_id: str, kind: str, name: str, args: Sequence[object]) -> Payload | None:
        return header_payload(self.team, proof(self.secret, self.team, workflow_id, kind, name, args))


@dataclass(frozen=True)
class KeyCredentials:
    """The worker's and an operator's: the key itself. Signs a message as the team its target's id names."""

    keys: TeamKeys

    def header(self, workflow_id: str, kind: str, name: str, args: Sequence[object]) -> Payload | None:
        team = team_of_workflow_id(workflow_id)
        if team is None:
            return None
        return header_payload(
            team, proof(team_secret(self.keys.current, team), team, workflow_id, kind, name, args)
        )


def credentials_from(settings: Settings) -> TeamCredentials | None:
    """A client's credentials: `POOLCTL_TEAM_TOKEN` when set (a team's caller), else the team auth key when
    this process has one (the worker, an operator, the dev stack), else None (messages to a team's workflow
    will be refused). Raises TeamAuthError for a malformed token or key."""
    if settings.team_token is not None and settings.team_token.get_secret_value().strip():
        return TokenCredentials.from_token(settings.team_token.get_secret_value())
    try:
        return KeyCredentials(load_team_keys(settings))
    except TeamAuthError:
        if settings.team_auth_key is not None and settings.team_auth_key.get_secret_value().strip():
            raise  # a key was given but is malformed: say so
        return None
