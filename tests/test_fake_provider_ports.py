"""The FAKE provider driver's `ports` option (benches point its servers at one process on many ports)."""

from __future__ import annotations

import pytest

from poolctl.activities.providers.base import ProviderQuotaError, ProvisionRequest
from poolctl.activities.providers.fake import FakeProvider


async def test_fake_provider_hands_out_free_ports_idempotently() -> None:
    fake = FakeProvider()

    def req(key: str) -> ProvisionRequest:
        return ProvisionRequest(pool="t/p", idempotency_key=key, options={"ports": [7001, 7002]})

    a = await fake.provision(req("a"))
    assert (a.host, a.port) == ("127.0.0.1", 7001)
    assert (await fake.provision(req("a"))).port == 7001, "same key, same server"
    b = await fake.provision(req("b"))
    assert b.port == 7002
    with pytest.raises(ProviderQuotaError, match="ports"):
        await fake.provision(req("c"))
    await fake.terminate(a.server_id)
    assert (await fake.provision(req("c"))).port == 7001, "a terminated server's port is free again"
    assert (await fake.provision(ProvisionRequest(pool="t/p", idempotency_key="d"))).port == 0
