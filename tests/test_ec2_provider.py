"""The `aws` (EC2) provider against a real moto server: tags and ClientToken, the errors a retry cannot fix
(bad credentials, unauthorized, invalid AMI / instance type, quota), option validation, ownership."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.awsrequest
import httpx
import pytest

from poolctl.activities.providers.base import ProviderConfigError, ProviderQuotaError, ProvisionRequest
from poolctl.activities.providers.ec2 import EC2Provider, client_token_for, key_tag_value
from poolctl.domain.errors import SpecError
from poolctl.starter.specfile import parse_spec
from tests.moto_server import REGION, MotoServer, aws_test_env, start_moto


def boto(endpoint: str, **creds: str) -> Any:
    return boto3.client("ec2", endpoint_url=endpoint, region_name=REGION, **creds)


def instance(endpoint: str, instance_id: str) -> dict[str, Any]:
    return boto(endpoint).describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def pool_key() -> str:
    return f"t{uuid.uuid4().hex[:6]}/web"


async def test_instances_carry_ownership_tags_and_the_client_token(aws_endpoint: str, moto_ami: str) -> None:
    provider = EC2Provider(endpoint_url=aws_endpoint)
    pool = pool_key()
    short = f"scale/{pool}/3/0"
    info = await provider.provision(
        ProvisionRequest(
            pool=pool,
            idempotency_key=short,
            options={"image_id": moto_ami, "port": 8080, "tags": {"env": "test"}},
        )
    )
    raw = instance(aws_endpoint, info.server_id)
    tags = {t["Key"]: t["Value"] for t in raw["Tags"]}
    team, name = pool.split("/")
    assert tags["poolctl:managed-by"] == "poolctl"
    assert (tags["poolctl:team"], tags["poolctl:pool"], tags["poolctl:pool-key"]) == (team, name, pool)
    assert tags["poolctl:idempotency-key"] == short and tags["env"] == "test"
    assert raw["ClientToken"] == short and raw["InstanceType"] == "t3.micro" and raw["ImageId"] == moto_ami
    assert (info.host, info.port) == (raw["PrivateIpAddress"], 8080)

    long_key = "scale/" + "x" * 80
    assert client_token_for(long_key) == hashlib.sha256(long_key.encode()).hexdigest()
    assert len(client_token_for(long_key)) == 64 and client_token_for("é") != "é"
    long_info = await provider.provision(
        ProvisionRequest(pool=pool, idempotency_key=long_key, options={"image_id": moto_ami})
    )
    assert instance(aws_endpoint, long_info.server_id)["ClientToken"] == client_token_for(long_key)
    assert key_tag_value("k" * 300).startswith("sha256:") and key_tag_value(long_key) == long_key
    again = await provider.provision(
        ProvisionRequest(pool=pool, idempotency_key=long_key, options={"image_id": moto_ami})
    )
    assert again.server_id == long_info.server_id


async def test_invalid_ami_and_instance_type_are_config_errors(aws_endpoint: str, moto_ami: str) -> None:
    provider = EC2Provider(endpoint_url=aws_endpoint)
    pool = pool_key()
    with pytest.raises(ProviderConfigError, match=r"InvalidAMIID.NotFound.*provider_options"):
        await provider.provision(
            ProvisionRequest(pool=pool, idempotency_key="a", options={"image_id": "ami-12345678"})
        )
    with pytest.raises(ProviderConfigError, match=r"InvalidInstanceType"):
        await provider.provision(
            ProvisionRequest(
                pool=pool, idempotency_key="b", options={"image_id": moto_ami, "instance_type": "zz.huge"}
            )
        )
    assert await provider.list_servers(pool) == []


async def test_bad_options_name_the_field_and_launch_nothing(aws_endpoint: str) -> None:
    provider = EC2Provider(endpoint_url=aws_endpoint)
    with pytest.raises(ProviderConfigError, match=r"provider_options.image_id"):
        await provider.provision(
            ProvisionRequest(pool="t/web", idempotency_key="k", options={"image_id": "nonsense"})
        )
    with pytest.raises(ProviderConfigError, match=r"provider_options.instance_typo"):
        await provider.provision(
            ProvisionRequest(
                pool="t/web", idempotency_key="k", options={"image_id": "ami-12345678", "instance_typo": "x"}
            )
        )
    spec = (
        "pools:\n  - name: web\n    provider: aws\n    provider_options: {image_id: ami-1, subnet_id: sn}\n"
    )
    with pytest.raises(SpecError) as caught:
        parse_spec(spec, "bad.yaml")
    text = str(caught.value)
    assert "provider_options" in text and "image_id" in text and "subnet_id" in text


async def test_terminate_refuses_an_instance_poolctl_did_not_launch(aws_endpoint: str, moto_ami: str) -> None:
    theirs = boto(aws_endpoint).run_instances(ImageId=moto_ami, MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"
    ]
    provider = EC2Provider(endpoint_url=aws_endpoint)
    with pytest.raises(ProviderConfigError, match="refusing to terminate"):
        await provider.terminate(theirs)
    assert instance(aws_endpoint, theirs)["State"]["Name"] == "running"
    assert theirs not in {s.server_id for s in await provider.list_servers()}


@pytest.fixture(scope="module")
def moto_with_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A second moto server that checks credentials and IAM permissions (after 2 free calls that create
    an IAM user without any policy)."""
    server = start_moto(tmp_path_factory.mktemp("moto-auth") / "moto.log", INITIAL_NO_AUTH_ACTION_COUNT="2")
    yield server
    server.stop()


async def test_bad_credentials_and_missing_permissions_are_config_errors(
    moto_with_auth: MotoServer, moto_ami: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    aws_test_env(monkeypatch)
    iam = boto3.client("iam", endpoint_url=moto_with_auth.url, region_name=REGION)
    iam.create_user(UserName="no-permissions")
    key = iam.create_access_key(UserName="no-permissions")["AccessKey"]
    req = ProvisionRequest(pool="t/web", idempotency_key="k", options={"image_id": moto_ami})

    aws_test_env(monkeypatch, access_key="AKIAUNKNOWNUNKNOWN00", secret="wrong")
    with pytest.raises(ProviderConfigError, match=r"AuthFailure.*credentials"):
        await EC2Provider(endpoint_url=moto_with_auth.url).provision(req)

    aws_test_env(monkeypatch, access_key=key["AccessKeyId"], secret=key["SecretAccessKey"])
    with pytest.raises(ProviderConfigError, match=r"AccessDenied.*not authorized.*IAM permissions"):
        await EC2Provider(endpoint_url=moto_with_auth.url).provision(req)


class _Body:
    def __init__(self, data: bytes):
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


async def test_instance_limit_exceeded_is_a_quota_error(aws_endpoint: str, tmp_path: Path) -> None:
    """moto 5 never enforces EC2 instance quotas (moto.ec2 has no InstanceLimitExceeded at all), so this test
    sends the real RunInstances request to moto for an AMI it does not have, takes moto's real error
    response, swaps its code for EC2's `InstanceLimitExceeded`, and lets botocore parse it into the
    ClientError the driver sees (a `before-send` hook on the driver's own client; no mock of the driver)."""
    provider = EC2Provider(endpoint_url=aws_endpoint)

    def rewrite_error(
        request: botocore.awsrequest.AWSPreparedRequest, **_: Any
    ) -> botocore.awsrequest.AWSResponse:
        real = httpx.post(
            request.url, content=request.body, headers=dict(request.headers.items()), trust_env=False
        )
        assert real.status_code == 400 and b"InvalidAMIID.NotFound" in real.content  # a real moto error
        body = real.content.replace(b"InvalidAMIID.NotFound", b"InstanceLimitExceeded")
        return botocore.awsrequest.AWSResponse(request.url, real.status_code, dict(real.headers), _Body(body))

    provider.client().meta.events.register("before-send.ec2.RunInstances", rewrite_error)
    with pytest.raises(ProviderQuotaError, match=r"InstanceLimitExceeded.*quota"):
        await provider.provision(
            ProvisionRequest(pool="t/web", idempotency_key="q", options={"image_id": "ami-12345678"})
        )
