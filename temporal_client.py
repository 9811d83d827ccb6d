"""Connecting to Temporal with poolctl's settings (address, namespace, TLS / mutual TLS, API key) and its one data converter (pydantic models on the wire,
every payload and failure message encrypted by `poolctl.payload_codec.EncryptionCodec`), and the
short-lived Temporal runtime a command line process connects through (`command_runtime`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import traceback
import weakref
from collections.abc import AsyncIterator
from typing import Any

from temporalio.client import Client
from temporalio.common import HeaderCodecBehavior
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.runtime import Runtime, TelemetryConfig
from temporalio.service import TLSConfig

from poolctl.payload_codec import EncryptionCodec, cached_keyring
from poolctl.settings import Settings, get_settings, pem_bytes
from poolctl.team_auth import TeamCredentials, credentials_from
from poolctl.team_interceptor import TeamClientInterceptor


def data_converter(settings: Settings | None = None) -> DataConverter:
    """The converter every client, worker, test environment and Replayer must use. Keys are read lazily
    (first payload) from `settings`, or from `get_settings()` when None."""
    if settings is None:
        codec = EncryptionCodec(lambda: cached_keyring(get_settings()))
    else:
        fixed = settings
        codec = EncryptionCodec(lambda: cached_keyring(fixed))
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=codec,
        # failure messages and stack traces travel as an encrypted payload too (the UI shows
        # "Encoded failure"; poolctl and the SDK decode them)
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


DATA_CONVERTER = data_converter()

# The runtime of the running command, if any. A plain module global on purpose: a context variable's value
# is copied into every task's context and into each bridge call's task locals, and those copies are released
# late (from Tokio threads), which would keep the runtime alive past `command_runtime`.
_command_runtime: list[Runtime] = []


def tls_config(settings: Settings) -> TLSConfig | None:
    """The TLS configuration the settings ask for, or None for a plaintext connection (the dev server).

    TLS is on when `temporal_tls` is set, an API key is given (Temporal Cloud), or any `temporal_tls_*`
    setting is: the server CA (default: system roots), the client certificate and key (mutual TLS) and
    the server name checked against the server's certificate (default: the address's host).
    """
    if not settings.uses_temporal_tls:
        return None
    ca, cert, key = (
        settings.temporal_tls_server_ca_cert,
        settings.temporal_tls_client_cert,
        settings.temporal_tls_client_key,
    )
    return TLSConfig(
        server_root_ca_cert=pem_bytes(ca) if ca else None,
        domain=settings.temporal_tls_server_name or None,
        client_cert=pem_bytes(cert) if cert else None,
        client_private_key=pem_bytes(key) if key else None,
    )


def client_options(settings: Settings, credentials: TeamCredentials | None = None) -> dict[str, Any]:
    """What every poolctl client is built with: the converter, headers encrypted like payloads (the team
    proofs travel in a header), and the team interceptor signing each message with `credentials` (default:
    `poolctl.team_auth.credentials_from(settings)`: the caller's team token, else the team auth key)."""
    return {
        "data_converter": data_converter(settings),
        "header_codec_behavior": HeaderCodecBehavior.CODEC,
        "interceptors": [TeamClientInterceptor(credentials or credentials_from(settings))],
    }


def rebuild_client(client: Client, settings: Settings, credentials: TeamCredentials | None = None) -> Client:
    """A client on `client`'s connection and namespace with poolctl's options (`client_options`): for a
    client made elsewhere, e.g. a test environment's."""
    return Client(client.service_client, namespace=client.namespace, **client_options(settings, credentials))


class TemporalUnreachable(RuntimeError):
    """Temporal could not be reached at `address`: `reason` is short ("connection refused", "address not
    found", "TLS handshake failed", ...); the message is one line, with no SDK or Rust dump."""

    def __init__(self, address: str, reason: str):
        self.address = address
        self.reason = reason
        super().__init__(f"cannot reach Temporal at {address} ({reason})")


_REASONS = (  # (text in the SDK's connect error, lower case; what to say)
    ("connection refused", "connection refused"),
    ("dns error", "address not found"),
    ("failed to lookup address", "address not found"),
    ("timed out", "timed out"),
    ("deadline", "timed out"),
    ("certificate", "TLS certificate rejected"),
    ("tls", "TLS handshake failed"),
    ("invalid uri", "invalid address"),
    ("unauthenticated", "not authenticated: check the API key or client certificate"),
    ("permission", "permission denied: check the namespace and credentials"),
    ("connection reset", "connection reset"),
)


def unreachable_reason(error_text: str) -> str:
    """A short reason for the SDK's connect error text (`Failed client connect: ... tonic::transport::Error(
    ... Os { code: 111, kind: ConnectionRefused, message: "Connection refused" })`): the first known cause
    found in it, else the text's first clause without the Rust debug dump."""
    low = error_text.lower()
    for needle, said in _REASONS:
        if needle in low:
            return said
    text = error_text.removeprefix("Failed client connect: ")
    return text.split("(", 1)[0].split(": tonic", 1)[0].strip().rstrip(":") or "unknown error"


async def connect(settings: Settings, *, runtime: Runtime | None = None) -> Client:
    """A client with poolctl's converter and team credentials (`client_options`) on `runtime` (the worker's, exporting SDK metrics), else on the
    runtime of the enclosing `command_runtime()` (a CLI command), else on temporalio's default runtime
    (tests, which live as long as their process). TLS as `tls_config` says.

    Raises `TemporalUnreachable` (a RuntimeError) when the server cannot be reached or the TLS handshake
    fails; the SDK's error is not chained to it and its frames are cleared, so nothing it referenced (the
    connect config, hence the command's runtime) outlives the call."""
    tls = tls_config(settings)
    try:
        return await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            **client_options(settings),
            api_key=settings.temporal_api_key,
            tls=tls if tls is not None else False,
            runtime=runtime or (_command_runtime[-1] if _command_runtime else None),
        )
    except RuntimeError as e:
        clear_frames(e)
        reason = unreachable_reason(str(e))
    raise TemporalUnreachable(settings.temporal_address, reason)


_left_behind: list[str] = []


def runtimes_left_behind() -> list[str]:
    """What kept each runtime of a finished `command_runtime` alive (empty when every one shut down). A
    runtime left behind is a bug; its threads outlive the loop, so the process must end without
    interpreter finalization (see `poolctl.starter.cli.main`)."""
    return list(_left_behind)


@contextlib.asynccontextmanager
async def command_runtime() -> AsyncIterator[None]:
    """Give the clients connected inside this block a Temporal runtime of their own and shut it down, in
    order, before the event loop closes.

    Why: temporalio's default runtime (a Rust Tokio thread pool) is a module global that lives until
    interpreter finalization. A Tokio thread completing an RPC calls back into Python (it takes the GIL to
    hand the result to the event loop); if that happens while the interpreter finalizes, CPython 3.11
    ends the thread with `pthread_exit`, its GIL guard unwinds, and the process aborts with
    ``Fatal Python error: PyGILState_Release: thread state ... must be current when releasing`` (exit 134)
    after the command did its work (temporalio/sdk-python#300). Dropping the last reference to a runtime
    shuts its Tokio pool down with the GIL released and waits for its threads, so every callback finishes
    while the loop still runs.

    Order on exit: cancel and await the loop's other tasks (so no RPC is in flight), drop the runtime
    (the caller's clients must be gone: the frames that held them have returned, tracebacks are cleared by
    `poolctl.starter.runner`), collect, then check that the runtime is really gone; if it is not, say
    what holds it in `runtimes_left_behind()`."""
    runtime = Runtime(telemetry=TelemetryConfig(), worker_heartbeat_interval=None)
    gone = weakref.ref(runtime)
    _command_runtime.append(runtime)
    del runtime
    try:
        yield
    finally:
        _command_runtime.pop()
        await _cancel_other_tasks()
        gc.collect()
        left = gone()
        if left is not None:
            _left_behind.append(", ".join(sorted({type(r).__name__ for r in gc.get_referrers(left)})))
            del left


async def _cancel_other_tasks() -> None:
    me = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    for t in others:
        t.cancel()
    if others:
        await asyncio.wait(others)
    for t in others:
        release_task(t)


def release_task(task: asyncio.Future[object]) -> None:
    """Let go of what a finished task's exception references. A cancelled task keeps its CancelledError,
    whose traceback holds the frames it was cancelled in (a client among their locals), in a slot the
    garbage collector does not traverse on Python 3.11: the cycle through it is never collected. Taking
    the exception out of the task (`result()` hands it over) and clearing its frames breaks it."""
    if not task.done():
        return
    try:
        task.result()
    except BaseException as e:  # noqa: BLE001 - whatever it failed with, only its frames matter here
        clear_frames(e)


def clear_frames(e: BaseException) -> None:
    """Drop the local variables of the finished frames an exception, its cause and its context reference:
    a traceback would otherwise keep a Temporal client alive past the loop."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        traceback.clear_frames(x.__traceback__)
        todo += [x.__cause__, x.__context__]
