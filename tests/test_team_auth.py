"""Team credentials without Temporal (poolctl.team_auth): tokens, proofs bound to one message, keys, headers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from poolctl.domain.names import team_of_workflow_id
from poolctl.domain.pool_state import ScaleRequest
from poolctl.settings import Settings
from poolctl.team_auth import (
    KeyCredentials,
    TeamAuthError,
    TeamKeys,
    TokenCredentials,
    issue_token,
    load_team_keys,
    parse_token,
    read_header,
)

KEY, OTHER = os.urandom(32), os.urandom(32)


def test_token_names_its_team_and_parses_back() -> None:
    token = issue_token(KEY, "ops")
    team, secret = parse_token(token)
    assert team == "ops" and len(secret) == 32 and token.startswith("ops:")
    assert issue_token(KEY, "ops") == token and issue_token(OTHER, "ops") != token
    for bad in ("ops", "ops:zz", "Ops:" + "0" * 64, "ops:" + "g" * 64, ":" + "0" * 64):
        with pytest.raises(TeamAuthError, match="POOLCTL_TEAM_TOKEN: not a team token"):
            parse_token(bad)
    with pytest.raises(TeamAuthError, match="not a team name"):
        issue_token(KEY, "Bad Team")


def test_a_proof_is_good_for_one_message_to_one_workflow_by_one_team() -> None:
    keys = TeamKeys(KEY)
    caller = TokenCredentials.from_token(issue_token(KEY, "ops"))
    args = [ScaleRequest(desired=3, reason="r", request_id="1")]
    header = read_header(caller.header("pool/ops/web", "update", "scale#u1", args))
    assert header is not None
    team, proof = header
    assert team == "ops" and keys.verify("ops", "pool/ops/web", "update", "scale#u1", args, proof)
    # the same proof for anything else does not pass
    assert not keys.verify("ops", "pool/ops/api", "update", "scale#u1", args, proof)
    assert not keys.verify("ops", "pool/ops/web", "update", "scale#u2", args, proof)
    assert not keys.verify("ops", "pool/ops/web", "signal", "scale#u1", args, proof)
    other_args = [ScaleRequest(desired=9, reason="r", request_id="1")]
    assert not keys.verify("ops", "pool/ops/web", "update", "scale#u1", other_args, proof)
    assert not keys.verify("dev", "pool/ops/web", "update", "scale#u1", args, proof)
    assert not TeamKeys(OTHER).verify("ops", "pool/ops/web", "update", "scale#u1", args, proof)
    # the token itself never travels
    assert parse_token(issue_token(KEY, "ops"))[1].hex() not in str(
        caller.header("pool/ops/web", "query", "s", [])
    )


def test_old_keys_still_verify_and_the_key_signs_as_the_targets_team() -> None:
    rotated = TeamKeys(OTHER, old=(KEY,))
    old_caller = TokenCredentials.from_token(issue_token(KEY, "ops"))
    header = read_header(old_caller.header("policy/ops/web/cpu", "signal", "pause", []))
    assert header is not None and rotated.verify(
        "ops", "policy/ops/web/cpu", "signal", "pause", [], header[1]
    )
    worker = KeyCredentials(rotated)
    signed = read_header(worker.header("scale/ops/web/3", "start", "", [1]))
    assert signed is not None and signed[0] == "ops"
    assert rotated.verify("ops", "scale/ops/web/3", "start", "", [1], signed[1])
    assert worker.header("housekeeping-run/poolctl", "start", "", []) is None  # no team: nothing to sign


def test_team_of_workflow_id() -> None:
    assert team_of_workflow_id("pool/ops/web") == "ops"
    assert team_of_workflow_id("policy/ops/web/cpu") == "ops"
    assert team_of_workflow_id("health/ops/web/srv-1") == "ops"
    assert team_of_workflow_id("notify/ops/web/scaling_action/ab12") == "ops"
    for none in ("housekeeping-run/q", "pool/ops", "pool//web", "pool/OPS/web", "other/ops/web", ""):
        assert team_of_workflow_id(none) is None, none


@given(st.binary(max_size=200))
def test_a_garbage_header_is_no_credential(data: bytes) -> None:
    from temporalio.api.common.v1 import Payload

    header = read_header(Payload(metadata={"encoding": b"json/plain"}, data=data))
    assert header is None or all(isinstance(x, str) for x in header)


def test_keys_come_from_the_setting_or_the_dev_stacks_file(tmp_path: Path) -> None:
    local = Settings(state_dir=tmp_path / "a", temporal_address="127.0.0.1:7233", team_auth_key=None)
    generated = load_team_keys(local)
    assert (
        load_team_keys(local) == generated
        and (tmp_path / "a" / "team-auth.key").stat().st_mode & 0o777 == 0o600
    )
    remote = Settings(state_dir=tmp_path / "b", temporal_address="temporal.example:7233", team_auth_key=None)
    with pytest.raises(TeamAuthError, match="no team auth key.*POOLCTL_TEAM_AUTH_KEY"):
        load_team_keys(remote)
    with pytest.raises(TeamAuthError, match="POOLCTL_TEAM_AUTH_KEY: not base64"):
        load_team_keys(remote.model_copy(update={"team_auth_key": SecretStr("not a key!")}))
