"""Connecting to Temporal over mutual TLS with poolctl's settings (CA, client certificate and key, server
name, API key), against the session's dev server behind a real TLS front (tests/tls_certs.py: the dev
server has no TLS flags)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from poolctl.settings import Settings
from poolctl.temporal_client import connect, tls_config
from tests.tls_certs import Pki, TlsFront, make_pki

pytestmark = pytest.mark.temporal

SERVER_NAME = "temporal.poolctl.test"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", SERVER_NAME)


@pytest.fixture
async def front(pki: Pki, temporal_env: WorkflowEnvironment) -> AsyncIterator[TlsFront]:
    target = temporal_env.client.service_client.config.target_host
    f = await TlsFront(pki, target).start()
    yield f
    await f.stop()


def tls_settings(front: TlsFront, pki: Pki, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "temporal_address": front.address,
        "temporal_tls_server_ca_cert": str(pki.ca_cert),
        "temporal_tls_client_cert": str(pki.client_cert),
        "temporal_tls_client_key": str(pki.client_key),
        "temporal_tls_server_name": SERVER_NAME,
        **overrides,
    }
    return Settings.model_validate(values)


async def namespace_of(client: Client) -> str:
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest

    resp = await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace=client.namespace)
    )
    return resp.namespace_info.name


async def test_worker_settings_connect_over_mutual_tls(front: TlsFront, pki: Pki) -> None:
    client = await connect(tls_settings(front, pki))
    assert await namespace_of(client) == "default"
    assert front.client_subjects and set(front.client_subjects) == {"poolctl-worker"}

    # the PEM contents work as well as the paths (secrets are often given inline)
    inline = tls_settings(
        front,
        pki,
        temporal_tls_server_ca_cert=pki.ca_cert.read_text(),
        temporal_tls_client_cert=pki.client_cert.read_text(),
        temporal_tls_client_key=pki.client_key.read_text(),
    )
    assert await namespace_of(await connect(inline)) == "default"


async def test_api_key_rides_on_tls(front: TlsFront, pki: Pki) -> None:
    """Temporal Cloud takes an API key over TLS; the dev server accepts any key, so this proves the key
    setting turns TLS on and the connection works with it (not that a key is checked)."""
    s = tls_settings(front, pki, temporal_api_key="test-api-key", temporal_tls=False)
    assert tls_config(s) is not None
    assert await namespace_of(await connect(s)) == "default"


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(
            {"temporal_tls_client_cert": None, "temporal_tls_client_key": None}, id="no-client-cert"
        ),
        pytest.param({"temporal_tls_server_name": "wrong.example"}, id="wrong-server-name"),
        pytest.param({"temporal_tls_server_ca_cert": "OTHER"}, id="untrusted-server"),
    ],
)
async def test_connection_fails_without_what_mutual_tls_needs(
    front: TlsFront, pki: Pki, overrides: dict[str, object]
) -> None:
    if overrides.get("temporal_tls_server_ca_cert") == "OTHER":
        overrides = {"temporal_tls_server_ca_cert": str(pki.other_ca_cert)}
    s = tls_settings(front, pki, **overrides)
    with pytest.raises(RuntimeError):
        await connect(s)


def test_tls_settings_are_checked(tmp_path: Path) -> None:
    assert tls_config(Settings()) is None
    with pytest.raises(ValidationError, match="temporal_tls_client_key"):
        Settings(temporal_tls_client_cert="-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ValidationError, match="temporal_tls_server_ca_cert.*no such file"):
        Settings(temporal_tls_server_ca_cert=str(tmp_path / "missing.pem"))
    s = Settings(temporal_tls=True)
    cfg = tls_config(s)
    assert cfg is not None and cfg.server_root_ca_cert is None and cfg.domain is None
