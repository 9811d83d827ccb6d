"""Secrets stay out of workflow history, logs and `--json` output: the payload codec (AES-256-GCM, key
rotation), the dev stack's generated key, masking at output, and a raw-history check on a live pool."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.message import Message as ProtoMessage
from pydantic import SecretStr
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.worker import Replayer

from poolctl.activities.providers.registry import get_provider
from poolctl.domain.names import pool_key, pool_workflow_id
from poolctl.domain.pool_spec import PoolSpec
from poolctl.domain.redaction import MASK, is_secret_name, redact
from poolctl.payload_codec import (
    ENCODING,
    KEY_ID_METADATA,
    EncryptionCodec,
    Keyring,
    PayloadKeyError,
    key_id,
    load_keyring,
    new_key_text,
    parse_key,
)
from poolctl.settings import Settings
from poolctl.starter.output import print_json
from poolctl.temporal_client import data_converter
from poolctl.worker import WORKFLOWS
from tests.helpers import apply_yaml, eventually, settled


def _payload(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(text).encode())


# ---- the codec -------------------------------------------------------------------------------------


async def test_codec_encrypts_every_payload_and_round_trips() -> None:
    key = base64.b64decode(new_key_text())
    codec = EncryptionCodec(Keyring.from_keys(key))
    plain = [_payload("hunter2-secret"), _payload("")]
    sealed = await codec.encode(plain)
    for p in sealed:
        assert p.metadata["encoding"] == ENCODING
        assert p.metadata[KEY_ID_METADATA] == key_id(key).encode()
        assert b"hunter2" not in p.SerializeToString() and b"json/plain" not in p.SerializeToString()
    assert sealed[0].data != (await codec.encode(plain[:1]))[0].data, "a fresh nonce every time"
    assert await codec.decode(sealed) == plain


async def test_rotation_new_key_encrypts_old_key_still_decrypts() -> None:
    old, new = (base64.b64decode(new_key_text()) for _ in range(2))
    written_before = await EncryptionCodec(Keyring.from_keys(old)).encode([_payload("before rotation")])
    rotated = EncryptionCodec(Keyring.from_keys(new, [old]))
    assert await rotated.decode(written_before) == [_payload("before rotation")]
    written_after = await rotated.encode([_payload("after")])
    assert written_after[0].metadata[KEY_ID_METADATA] == key_id(new).encode()
    # a process that dropped the old key says which key id it lacks
    with pytest.raises(PayloadKeyError, match=key_id(old)):
        await EncryptionCodec(Keyring.from_keys(new)).decode(written_before)


async def test_tampered_payload_is_refused_and_clear_payloads_pass_through() -> None:
    codec = EncryptionCodec(Keyring.from_keys(base64.b64decode(new_key_text())))
    [sealed] = await codec.encode([_payload("x")])
    sealed.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(PayloadKeyError, match="failed authentication"):
        await codec.decode([sealed])
    assert await codec.decode([_payload("written before encryption")]) == [
        _payload("written before encryption")
    ]


def test_bad_keys_are_named() -> None:
    with pytest.raises(PayloadKeyError, match="POOLCTL_PAYLOAD_KEY: not base64"):
        parse_key("not base64 at all!", "POOLCTL_PAYLOAD_KEY")
    with pytest.raises(PayloadKeyError, match="16 bytes, expected 32"):
        parse_key(base64.b64encode(b"k" * 16).decode(), "POOLCTL_PAYLOAD_KEY")
    assert parse_key(base64.urlsafe_b64encode(b"\xfb" * 32).decode().rstrip("="), "x") == b"\xfb" * 32


def test_keyring_from_settings(tmp_path: Path) -> None:
    new, old = new_key_text(), new_key_text()
    ring = load_keyring(
        Settings(state_dir=tmp_path, payload_key=new, payload_keys_old=f"{old}, {new_key_text()}")
    )
    assert ring.current_id == key_id(base64.b64decode(new))
    assert key_id(base64.b64decode(old)) in ring.key_ids and len(ring.key_ids) == 3
    assert new not in repr(Settings(state_dir=tmp_path, payload_key=new, balancer_token="tok-xyz"))
    assert "tok-xyz" not in repr(Settings(state_dir=tmp_path, balancer_token="tok-xyz"))


def test_dev_key_is_generated_once_with_mode_0600_only_for_a_local_temporal(tmp_path: Path) -> None:
    local = Settings(state_dir=tmp_path / "a", temporal_address="127.0.0.1:7233", payload_key=None)
    ring = load_keyring(local)
    path = tmp_path / "a" / "payload.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_keyring(local).current_id == ring.current_id, "the same key on the next start"
    # once POOLCTL_PAYLOAD_KEY replaces the generated key, the generated one still decrypts
    replaced = load_keyring(local.model_copy(update={"payload_key": SecretStr(new_key_text())}))
    assert ring.current_id in replaced.key_ids and replaced.current_id != ring.current_id
    with pytest.raises(PayloadKeyError, match="set POOLCTL_PAYLOAD_KEY"):
        load_keyring(
            Settings(state_dir=tmp_path / "b", temporal_address="temporal.example.com:7233", payload_key=None)
        )
    assert not (tmp_path / "b" / "payload.key").exists()


# ---- masking at output -----------------------------------------------------------------------------


def test_secret_names_and_redaction() -> None:
    for name in ("api_token", "aws_secret_access_key", "password", "db_passwd", "API_KEY", "webhook_secret"):
        assert is_secret_name(name), name
    for name in ("region", "instance_type", "min_servers", "ssl_certificate", "quota"):
        assert not is_secret_name(name), name
    spec = PoolSpec(
        name="web",
        provider="fake",
        provider_options={"quota": 3, "api_token": "tok-1"},  # only options the fake provider declares
    )
    out = redact(
        {
            "spec": spec,
            "nested": {"options": {"aws_secret_access_key": "AKS"}},
            "url": "http://admin:pw-9@127.0.0.1:9090/q",
            "list": [{"password": "p"}],
        }
    )
    text = json.dumps(out)
    assert "tok-1" not in text and "AKS" not in text and "pw-9" not in text and '"p"' not in text
    assert out["spec"]["provider_options"]["quota"] == 3
    assert out["spec"]["provider_options"]["api_token"] == MASK
    assert out["url"] == f"http://admin:{MASK}@127.0.0.1:9090/q"
    assert "tok-1" not in repr(spec) and "tok-1" not in str(spec), "a logged spec shows no options"


def test_json_output_masks_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    print_json([{"pool": "web", "provider_options": {"api_token": "tok-2", "region": "eu-west-1"}}])
    out = capsys.readouterr().out
    assert "tok-2" not in out and MASK in out and "eu-west-1" in out


# ---- a live pool: raw history ----------------------------------------------------------------------


def _payloads(msg: ProtoMessage, path: str = "") -> Iterator[tuple[str, Payload]]:
    """Every Payload inside a history event, with its field path."""
    for field, value in msg.ListFields():
        where = f"{path}.{field.name}"
        if field.message_type is None:
            continue
        if isinstance(value, ProtoMessage):
            items = [value]
        else:  # a repeated field, or a map (of payloads: search attributes, memo, header)
            items = list(value.values()) if field.message_type.GetOptions().map_entry else list(value)
        for item in items:
            if isinstance(item, Payload):
                yield where, item
            elif isinstance(item, ProtoMessage):
                yield from _payloads(item, where)


@pytest.mark.temporal
async def test_provider_secret_is_encrypted_in_raw_history_and_decodes_with_the_codec(
    client: Client, settings: Settings, worker, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the real apply path on a dev server: a pool whose provider options carry a credential.
    Raw history (no codec) holds the secret's bytes nowhere; every payload but search attributes is
    encrypted; the codec decodes them, the driver got the secret intact, nothing logged it, and a
    Replayer whose keys were rotated since (new key + the old one) still replays the history."""
    caplog.set_level(logging.DEBUG)
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    await apply_yaml(
        client,
        settings,
        f"""
pools:
  - name: vault
    provider: fake
    provider_options: {{api_token: "{secret}", quota: 5}}
    min_servers: 1
    max_servers: 3
    desired_servers: 2
""",
    )
    await settled(client, settings, "vault", 2)
    provider = get_provider("fake", settings.state_dir)
    assert getattr(provider, "api_tokens", {})[pool_key(settings.team, "vault")] == secret

    query = f'TaskQueue = "{settings.task_queue}"'
    executions = await eventually(
        lambda: _list(client, query), lambda xs: {x[0].split("/")[0] for x in xs} >= {"pool", "scale"}
    )
    needles = [secret.encode(), base64.b64encode(secret.encode()), secret.encode().hex().encode()]
    decoded_hits = 0
    codec = client.data_converter.payload_codec
    assert codec is not None
    for wf_id, run_id in executions:
        history = await client.get_workflow_handle(wf_id, run_id=run_id).fetch_history()
        raw = b"".join(e.SerializeToString() for e in history.events) + history.to_json().encode()
        for needle in needles:
            assert needle not in raw, f"{wf_id}: the secret is readable in raw history"
        for event in history.events:
            for where, p in _payloads(event):
                if "search_attributes" in where:
                    continue  # what the UI filters on: team, pool and state names, never a secret
                assert p.metadata.get("encoding") == ENCODING, f"{wf_id} {event.event_type} {where}"
                [clear] = await codec.decode([p])
                decoded_hits += secret.encode() in clear.data
    assert decoded_hits >= 2, "with the codec the spec (and the provision inputs) decode"
    assert secret not in caplog.text

    # rotation: a Replayer with a new key that keeps the old one decodes and replays the old history
    old_key = SecretStr(os.environ["POOLCTL_PAYLOAD_KEY"])  # the session's key (tests/conftest.py)
    rotated = data_converter(
        settings.model_copy(update={"payload_key": SecretStr(new_key_text()), "payload_keys_old": old_key})
    )
    pool_history = await client.get_workflow_handle(pool_workflow_id(settings.team, "vault")).fetch_history()
    result = await Replayer(workflows=WORKFLOWS, data_converter=rotated).replay_workflow(
        pool_history, raise_on_replay_failure=False
    )
    assert result.replay_failure is None


async def _list(client: Client, query: str) -> list[tuple[str, str]]:
    return [(x.id, x.run_id) async for x in client.list_workflows(query)]
