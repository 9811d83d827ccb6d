"""Connecting to Temporal with poolctl's settings and data converter (pydantic models on the wire)."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from poolctl.settings import Settings

DATA_CONVERTER = pydantic_data_converter


async def connect(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=DATA_CONVERTER,
        api_key=settings.temporal_api_key,
        tls=settings.temporal_tls or bool(settings.temporal_api_key),
    )
