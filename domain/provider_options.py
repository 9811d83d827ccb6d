"""The declared options of each provider driver (`provider_options` in a pool spec), checked at validation.

A typo in an option is refused when the spec is validated, not at the first provisioning. The drivers in
activities/providers/ read exactly these keys (see their module docstrings).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, Strict, ValidationError, field_validator

from poolctl.domain.bounds import MAX_SERVERS, Port, ServerCount
from poolctl.domain.model import StrictModel
from poolctl.domain.provider_faults import ProviderFaults

_StartupSeconds = Annotated[float, Strict(), Field(gt=0, le=3600, allow_inf_nan=False)]


class LocalProviderOptions(ProviderFaults):
    """Options of the `local` provider (real processes on 127.0.0.1), with its fault-injection options
    (domain.provider_faults: `fail_ratio`, `hang_ratio`/`hang_s`, `fail_for_s`, `boot_delay_s`)."""

    quota: ServerCount | None = Field(default=None, description="most live servers of the pool")
    command: list[Annotated[str, Strict(), Field(min_length=1, max_length=4096)]] | None = Field(
        default=None, min_length=1, max_length=256, description="argv prefix replacing the local server"
    )
    startup_timeout_s: _StartupSeconds | None = Field(
        default=None, description="wait for the server to answer"
    )


class FakeProviderOptions(StrictModel):
    """Options of the `fake` provider (in memory, for failure-handling tests)."""

    fail_provision: Annotated[bool, Strict()] = False
    fail_terminate: Annotated[bool, Strict()] = False
    fail_times: ServerCount = 0
    quota: ServerCount | None = None
    delay_s: Annotated[float, Strict(), Field(ge=0, le=3600, allow_inf_nan=False)] = 0.0
    ports: list[Port] | None = Field(default=None, max_length=MAX_SERVERS, description="ports servers get")
    api_token: str | None = Field(default=None, max_length=4096, description="a stand-in cloud credential")


# AWS's limits on tags (user tags must not start with "aws:"; key <= 128, value <= 256 characters)
_TAG_KEY_PATTERN = r"^(?!aws:)[\w .:/=+@-]{1,128}$"


class AwsProviderOptions(StrictModel):
    """Options of the `aws` (EC2) provider. Names follow the EC2 RunInstances API (`ImageId` ->
    `image_id`, ...). Credentials and region come from the standard AWS configuration (environment,
    shared config/credentials files, instance role); `region` here overrides it for one pool."""

    image_id: str = Field(
        pattern=r"^ami-[0-9a-f]{8,17}$", description="AMI the servers boot from (ami-0123456789abcdef0)"
    )
    instance_type: str = Field(
        default="t3.micro", pattern=r"^[a-z0-9-]+\.[a-z0-9-]+$", description="EC2 instance type"
    )
    subnet_id: str | None = Field(default=None, pattern=r"^subnet-[0-9a-f]{8,17}$")
    security_group_ids: list[str] = Field(default_factory=list, max_length=5)
    key_name: str | None = Field(default=None, min_length=1, max_length=255, description="EC2 key pair")
    iam_instance_profile: str | None = Field(
        default=None, min_length=1, description="instance profile name, or its ARN (arn:aws:iam::...)"
    )
    user_data: str | None = Field(default=None, max_length=16_384, description="cloud-init user data")
    region: str | None = Field(
        default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$", description="overrides the configured region"
    )
    port: int = Field(default=80, ge=1, le=65535, description="port the servers' service listens on")
    address: Literal["private", "public"] = Field(
        default="private", description="which IP address the balancer and health checks use"
    )
    tags: dict[str, str] = Field(default_factory=dict, description="extra instance tags")
    running_timeout_s: float = Field(
        default=45.0, gt=0, le=3600, description="how long a provision waits for the instance to run"
    )

    @field_validator("security_group_ids")
    @classmethod
    def _group_ids(cls, ids: list[str]) -> list[str]:
        for g in ids:
            if not re.fullmatch(r"sg-[0-9a-f]{8,17}", g):
                raise ValueError(f"{g!r} is not a security group id (sg-...)")
        return ids

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: dict[str, str]) -> dict[str, str]:
        for k, v in tags.items():
            if not re.fullmatch(_TAG_KEY_PATTERN, k) or k.startswith("poolctl:"):
                raise ValueError(
                    f"tag key {k!r} is not allowed (1-128 characters, no aws: or poolctl: prefix)"
                )
            if len(v) > 256:
                raise ValueError(f"the value of tag {k!r} is longer than 256 characters")
        return tags


class StaticProviderOptions(StrictModel):
    """The `static` provider (existing servers, listed in the pool's `servers`) has no options."""


PROVIDER_OPTIONS: dict[str, type[StrictModel]] = {
    "local": LocalProviderOptions,
    "fake": FakeProviderOptions,
    "aws": AwsProviderOptions,
    "static": StaticProviderOptions,
}


def provider_option_problems(provider: str, options: dict[str, Any]) -> list[tuple[str, str]]:
    """(option path, message) for each option `provider` does not declare or whose value is wrong."""
    model = PROVIDER_OPTIONS.get(provider)
    if model is None:
        return []
    try:
        model.model_validate(options)
    except ValidationError as e:
        known = ", ".join(sorted(model.model_fields))
        problems = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(
                    (loc, f"unknown option of the {provider} provider (known: {known})")
                    if known
                    else (loc, f"the {provider} provider has no options")
                )
            else:
                problems.append((loc, str(err["msg"])))
        return problems
    return []
