"""Encryption of every Temporal payload (AES-256-GCM) and the keys it uses: the codec that the client,
the worker, test environments and any Replayer share through `poolctl.temporal_client.DATA_CONVERTER`,
so provider credentials and other secrets never reach workflow history in clear text."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from poolctl.settings import Settings
from poolctl.state_secrets import key_texts, read_or_create_secret_file

ENCODING = b"binary/encrypted"
"""`encoding` metadata of an encrypted payload (the same marker Temporal's samples use)."""
KEY_ID_METADATA = "encryption-key-id"
"""Metadata naming the key that encrypted a payload: `key_id(key)`, a fingerprint, never the key."""
KEY_FILE = "payload.key"
"""The dev stack's generated key, `<state_dir>/payload.key` (mode 0600)."""
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # the GCM standard nonce size


class PayloadKeyError(Exception):
    """A payload key is missing, malformed, or a payload was encrypted with a key this process lacks."""


def key_id(key: bytes) -> str:
    """A key's public name: 16 hex digits of SHA-256 over a domain tag and the key. Safe to show."""
    return hashlib.sha256(b"poolctl-payload-key/" + key).hexdigest()[:16]


def new_key_text() -> str:
    """A fresh random key, base64 (what `POOLCTL_PAYLOAD_KEY` takes)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def parse_key(text: str, where: str) -> bytes:
    """A base64 (standard or URL-safe) 32-byte key; `where` names the setting in the error message."""
    raw = text.strip()
    try:
        key = base64.b64decode(raw.replace("-", "+").replace("_", "/") + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise PayloadKeyError(f"{where}: not base64 (expected 32 random bytes in base64)") from None
    if len(key) != KEY_BYTES:
        raise PayloadKeyError(f"{where}: the key is {len(key)} bytes, expected {KEY_BYTES} (AES-256)")
    return key


@dataclass(frozen=True)
class Keyring:
    """The key that encrypts (`current`) and every key that may still decrypt, by key id."""

    current_id: str
    ciphers: dict[str, AESGCM] = field(repr=False)

    @classmethod
    def from_keys(cls, current: bytes, old: Sequence[bytes] = ()) -> Keyring:
        ciphers = {key_id(k): AESGCM(k) for k in old}
        current_id = key_id(current)
        ciphers[current_id] = AESGCM(current)
        return cls(current_id=current_id, ciphers=ciphers)

    @property
    def key_ids(self) -> list[str]:
        return sorted(self.ciphers)


def key_file(settings: Settings) -> Path:
    return settings.state_dir / KEY_FILE


def ensure_dev_key(settings: Settings) -> Path:
    """Generate `<state_dir>/payload.key` if missing (what `poolctl dev up` does); returns its path."""
    read_or_create_secret_file(key_file(settings), new_key_text)
    return key_file(settings)


def load_keyring(settings: Settings) -> Keyring:
    """The keys from the settings:

    1. `POOLCTL_PAYLOAD_KEY` encrypts; else `<state_dir>/payload.key`, generated on first use, but only
       when Temporal is on a loopback address (the dev stack): a production client and worker on two
       hosts would each generate their own and could not read each other's payloads.
    2. Decrypt-only keys: `POOLCTL_PAYLOAD_KEYS_OLD` (comma- or space-separated), plus the state dir's
       generated key when one exists and `POOLCTL_PAYLOAD_KEY` replaced it.

    Raises PayloadKeyError naming the setting that is missing or malformed."""
    current, old = key_texts(
        configured=settings.payload_key,
        configured_name="POOLCTL_PAYLOAD_KEY",
        old=settings.payload_keys_old,
        old_name="POOLCTL_PAYLOAD_KEYS_OLD",
        path=key_file(settings),
        temporal_address=settings.temporal_address,
        new_text=new_key_text,
        missing=lambda: PayloadKeyError(
            f"no payload key: Temporal at {settings.temporal_address} is not local, so set POOLCTL_PAYLOAD_KEY "
            "(32 random bytes, base64, e.g. `openssl rand -base64 32`) to the same value for every client "
            "and worker (docs/security.md#secrets)"
        ),
        keep_replaced_file=True,
    )
    return Keyring.from_keys(
        parse_key(current.text, current.where), [parse_key(k.text, k.where) for k in old]
    )


_cache: dict[tuple[object, ...], Keyring] = {}
_cache_lock = threading.Lock()


def cached_keyring(settings: Settings) -> Keyring:
    """`load_keyring`, memoized per key settings and state dir (codecs call this for every batch)."""
    cache_key = (
        settings.payload_key.get_secret_value() if settings.payload_key else None,
        settings.payload_keys_old.get_secret_value() if settings.payload_keys_old else None,
        str(settings.state_dir),
        settings.temporal_address,
    )
    with _cache_lock:
        ring = _cache.get(cache_key)
        if ring is None:
            ring = _cache[cache_key] = load_keyring(settings)
        return ring


class EncryptionCodec(PayloadCodec):
    """Encrypts every payload with the keyring's current key (AES-256-GCM, random 96-bit nonce, the key
    id as associated data) and decrypts with whichever key its `encryption-key-id` names.

    The wrapped payload is the whole serialized original (metadata and data), so nothing about a value
    but its length is visible. Payloads without the encrypted marker pass through `decode` unchanged
    (histories written before encryption was turned on stay readable). `keyring` is a Keyring or a
    function returning one, called per batch so that settings are read lazily."""

    def __init__(self, keyring: Keyring | Callable[[], Keyring]) -> None:
        self._keyring = keyring

    @property
    def keyring(self) -> Keyring:
        return self._keyring if isinstance(self._keyring, Keyring) else self._keyring()

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        ring = self.keyring
        cipher = ring.ciphers[ring.current_id]
        kid = ring.current_id.encode()
        out = []
        for p in payloads:
            nonce = os.urandom(NONCE_BYTES)
            sealed = nonce + cipher.encrypt(nonce, p.SerializeToString(), kid)
            out.append(Payload(metadata={"encoding": ENCODING, KEY_ID_METADATA: kid}, data=sealed))
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(self.decode_all(payloads))

    def decode_all(self, payloads: Iterable[Payload]) -> Iterable[Payload]:
        ring: Keyring | None = None
        for p in payloads:
            if p.metadata.get("encoding") != ENCODING:
                yield p
                continue
            ring = ring or self.keyring
            kid = p.metadata.get(KEY_ID_METADATA, b"").decode()
            cipher = ring.ciphers.get(kid)
            if cipher is None:
                raise PayloadKeyError(
                    f"payload encrypted with key id {kid or '(none)'}, which this process does not have "
                    f"(it has {', '.join(ring.key_ids)}): add that key to POOLCTL_PAYLOAD_KEYS_OLD"
                )
            try:
                clear = cipher.decrypt(p.data[:NONCE_BYTES], p.data[NONCE_BYTES:], kid.encode())
            except InvalidTag:
                raise PayloadKeyError(f"payload encrypted with key id {kid} failed authentication") from None
            yield Payload.FromString(clear)
