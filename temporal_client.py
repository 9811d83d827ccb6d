"""Connecting to Temporal with poolctl's settings and its one data converter: pydantic models on the wire,
every payload (and failure message) encrypted by `poolctl.payload_codec.EncryptionCodec`."""

from __future__ import annotations

import dataclasses

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.runtime import Runtime

from poolctl.payload_codec import EncryptionCodec, cached_keyring
from poolctl.settings import Settings, get_settings


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


async def connect(settings: Settings, *, runtime: Runtime | None = None) -> Client:
    """A client with poolctl's converter; `runtime` (the worker's, exporting SDK metrics) or the default."""
    return await Client.connect(
        settings.temporal_address,
        runtime=runtime,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings),
        api_key=settings.temporal_api_key,
        tls=settings.temporal_tls or bool(settings.temporal_api_key),
    )
