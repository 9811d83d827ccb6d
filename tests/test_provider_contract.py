"""The provider contract, run against every driver: `local` (real processes), `fake` (in memory; the
test ids say so), `static` (existing servers registered by address) and `ec2` (boto3 against a real
moto server): idempotent provision under retry,
terminate twice, list by pool, and non-retryable errors surfaced as non-retryable ApplicationErrors."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from poolctl.activities.messages import ProvisionInput
from poolctl.activities.providers.base import (
    Provider,
    ProviderConfigError,
    ProviderQuotaError,
    ProvisionRequest,
    ServerState,
)
from poolctl.activities.providers.registry import clear_provider_cache, get_provider, kill_all_local_servers
from poolctl.activities.provisioning import ProvisioningActivities
from poolctl.domain import errors
from poolctl.settings import Settings
from poolctl.store.db import migrate


@dataclass
class Driver:
    """One provider under contract: how to provision a working server and how to make it fail for good."""

    name: str
    provider: Provider
    settings: Settings
    options: dict[str, Any] = field(default_factory=dict)
    failing_options: dict[str, Any] = field(default_factory=dict)
    failing_error: type[Exception] = ProviderConfigError
    failing_type: str = errors.PROVIDER_CONFIG_ERROR


@pytest.fixture(params=["local", "fake", "static", "ec2"])
async def driver(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Driver]:
    settings = Settings(state_dir=tmp_path / "state", database_url=f"sqlite:///{tmp_path / 'poolctl.db'}")
    settings.ensure_state_dir()
    if request.param in ("local", "fake"):  # both refuse past a `quota` option
        d = Driver(
            request.param,
            get_provider(request.param, settings.state_dir, settings),
            settings,
            failing_options={"quota": 0},
            failing_error=ProviderQuotaError,
            failing_type=errors.PROVIDER_QUOTA_ERROR,
        )
    elif request.param == "static":  # registers an address; a malformed one is a config error
        migrate(settings.resolved_database_url)  # its registry is the store
        d = Driver(
            "static",
            get_provider("static", settings.state_dir, settings),
            settings,
            options={"address": "127.0.0.1:8001"},
            failing_options={"address": "127.0.0.1:0"},
        )
    else:
        endpoint = request.getfixturevalue("aws_endpoint")
        settings = settings.model_copy(update={"aws_endpoint_url": endpoint})
        d = Driver(
            "aws",
            get_provider("aws", settings.state_dir, settings),
            settings,
            options={"image_id": request.getfixturevalue("moto_ami")},
            # moto (started with AMI validation) answers InvalidAMIID.NotFound for an AMI it does not have
            failing_options={"image_id": "ami-12345678"},
        )
    yield d
    kill_all_local_servers(settings.state_dir)
    clear_provider_cache()


def unique_pool() -> str:
    return f"t{uuid.uuid4().hex[:6]}/web"


def live(servers: list) -> list:
    return [s for s in servers if s.state is not ServerState.TERMINATED]


async def test_provision_is_idempotent_under_retry(driver: Driver) -> None:
    pool = unique_pool()
    req = ProvisionRequest(pool=pool, idempotency_key=f"scale/{pool}/1/0", options=driver.options)
    first = await driver.provider.provision(req)
    assert first.state is ServerState.RUNNING and first.provider == driver.name
    assert first.pool == pool and first.idempotency_key == req.idempotency_key and first.host
    retried = await driver.provider.provision(req)  # the activity retried after the first call ran
    assert retried.server_id == first.server_id and retried.state is ServerState.RUNNING
    assert [s.server_id for s in live(await driver.provider.list_servers(pool))] == [first.server_id]
    described = await driver.provider.describe(first.server_id)
    assert described is not None and described.server_id == first.server_id


async def test_terminate_twice_succeeds_and_unknown_is_none(driver: Driver) -> None:
    pool = unique_pool()
    req = ProvisionRequest(pool=pool, idempotency_key=f"scale/{pool}/1/0", options=driver.options)
    info = await driver.provider.provision(req)
    gone = await driver.provider.terminate(info.server_id)
    assert gone is not None and gone.server_id == info.server_id and gone.state is ServerState.TERMINATED
    again = await driver.provider.terminate(info.server_id)
    assert again is not None and again.state is ServerState.TERMINATED
    described = await driver.provider.describe(info.server_id)
    assert described is not None and described.state is ServerState.TERMINATED
    assert live(await driver.provider.list_servers(pool)) == []
    # the same key never yields a second server once its server was terminated
    replay = await driver.provider.provision(req)
    assert replay.server_id == info.server_id and replay.state is ServerState.TERMINATED
    assert await driver.provider.terminate("i-0123456789abcdef0") is None


async def test_list_servers_by_pool(driver: Driver) -> None:
    web, api = unique_pool(), unique_pool()
    made = {
        p: {
            (
                await driver.provider.provision(
                    ProvisionRequest(pool=p, idempotency_key=f"{p}/{i}", options=driver.options)
                )
            ).server_id
            for i in range(n)
        }
        for p, n in ((web, 2), (api, 1))
    }
    assert {s.server_id for s in await driver.provider.list_servers(web)} == made[web]
    assert {s.server_id for s in await driver.provider.list_servers(api)} == made[api]
    assert all(s.pool == web for s in await driver.provider.list_servers(web))
    everything = {s.server_id for s in await driver.provider.list_servers()}
    assert made[web] | made[api] <= everything


async def test_errors_a_retry_cannot_fix_are_non_retryable(driver: Driver) -> None:
    pool = unique_pool()
    req = ProvisionRequest(pool=pool, idempotency_key=f"{pool}/bad", options=driver.failing_options)
    with pytest.raises(driver.failing_error):
        await driver.provider.provision(req)
    assert live(await driver.provider.list_servers(pool)) == []

    # the same failure through the real activity: a non-retryable ApplicationError of a listed type
    migrate(driver.settings.resolved_database_url)
    team, name = pool.split("/")
    inp = ProvisionInput(
        team=team,
        pool=name,
        provider=driver.name,
        options=driver.failing_options,
        idempotency_key=f"{pool}/bad2",
    )
    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(ProvisioningActivities(driver.settings).provision_server, inp)
    assert caught.value.non_retryable and caught.value.type == driver.failing_type
    assert caught.value.type in errors.NON_RETRYABLE_ERROR_TYPES
