"""The `aws` provider: each server is an EC2 instance, created and found again through boto3.

Idempotency (same key -> same instance, never a second one):

- ``ClientToken`` of ``RunInstances`` is the idempotency key when it is ASCII and at most 64
  characters, else the SHA-256 hex digest of the key (exactly 64). EC2 then answers a repeated
  request with the instance it already launched, which also covers two concurrent calls.
- Before launching, the driver looks the key up by tag (``poolctl:idempotency-key``) and returns the
  instance it finds, in whatever state. This also covers providers that ignore ``ClientToken``
  (moto 5 does: it launches a new instance for a repeated token) and tokens EC2 has forgotten.
  A key whose instance was terminated yields that instance as ``TERMINATED``; nothing new starts.

Tags on every instance (and its volumes): ``poolctl:managed-by=poolctl``, ``poolctl:team``,
``poolctl:pool``, ``poolctl:pool-key`` (``team/pool``), ``poolctl:idempotency-key``, ``poolctl:port`` and
``poolctl:address`` (where its service answers), ``Name``, plus the pool's own ``tags`` option. ``list_servers`` describes by these tags (drift reconcile, orphan
detection); ``terminate`` refuses an instance that lacks ``poolctl:managed-by``.

States: ``pending`` -> PENDING, ``running`` -> RUNNING, every other state (``shutting-down``,
``terminated``, ``stopping``, ``stopped``) -> TERMINATED (the EC2 state is in ``details["ec2_state"]``).

Errors: boto3 ``ClientError`` codes that a retry cannot fix (credentials, authorization, invalid
AMI / instance type / subnet / parameters) raise ``ProviderConfigError``; quota codes
(``InstanceLimitExceeded``, ``VcpuLimitExceeded``, ...) raise ``ProviderQuotaError``; the rest
(throttling, capacity, network) raise ``ProviderError`` and Temporal retries them.

boto3 is synchronous: every call runs in a thread (``asyncio.to_thread``). Options are
``poolctl.domain.provider_options.AwsProviderOptions``.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from datetime import UTC, datetime
from typing import Any

import botocore.exceptions
from pydantic import ValidationError

from poolctl.activities.providers.base import (
    ProviderConfigError,
    ProviderError,
    ProviderQuotaError,
    ProvisionRequest,
    ServerInfo,
    ServerState,
)
from poolctl.domain.provider_options import AwsProviderOptions

TAG_MANAGED_BY = "poolctl:managed-by"
TAG_TEAM = "poolctl:team"
TAG_POOL = "poolctl:pool"
TAG_POOL_KEY = "poolctl:pool-key"
TAG_KEY = "poolctl:idempotency-key"
TAG_PORT = "poolctl:port"
TAG_ADDRESS = "poolctl:address"
MANAGED_BY = "poolctl"

CLIENT_TOKEN_MAX = 64  # EC2: "Constraints: Maximum 64 ASCII characters"
TAG_VALUE_MAX = 256
POLL_INTERVAL_S = 0.5

# Error codes (EC2 API reference, "Error codes") that a retry cannot fix.
AUTH_ERROR_CODES = frozenset(
    {
        "AuthFailure",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
        "ExpiredToken",
        "RequestExpired",
        "UnauthorizedOperation",
        "AccessDenied",
        "AccessDeniedException",
        "OptInRequired",
        "Blocked",
    }
)
QUOTA_ERROR_CODES = frozenset(
    {
        "InstanceLimitExceeded",
        "VcpuLimitExceeded",
        "MaxSpotInstanceCountExceeded",
        "ResourceLimitExceeded",
        "VolumeLimitExceeded",
        "AddressLimitExceeded",
    }
)
CONFIG_ERROR_PREFIXES = (
    "InvalidAMIID",
    "InvalidInstanceType",
    "InvalidSubnetID",
    "InvalidSubnet",
    "InvalidGroup",
    "InvalidKeyPair",
    "InvalidParameter",
    "InvalidIamInstanceProfile",
    "InvalidUserData",
    "InvalidBlockDeviceMapping",
    "MissingParameter",
    "IdempotentParameterMismatch",
    "UnsupportedOperation",
    "Unsupported",
)


def client_token_for(idempotency_key: str) -> str:
    """The RunInstances ``ClientToken`` of a key: the key itself if it is printable ASCII of at most 64
    characters, else its SHA-256 hex digest (64 characters). Deterministic."""
    if (
        len(idempotency_key) <= CLIENT_TOKEN_MAX
        and idempotency_key.isascii()
        and idempotency_key.isprintable()
    ):
        return idempotency_key
    return hashlib.sha256(idempotency_key.encode()).hexdigest()


def key_tag_value(idempotency_key: str) -> str:
    """The ``poolctl:idempotency-key`` tag value: the key, or its SHA-256 when longer than a tag allows."""
    if len(idempotency_key) <= TAG_VALUE_MAX:
        return idempotency_key
    return "sha256:" + hashlib.sha256(idempotency_key.encode()).hexdigest()


def classify_client_error(e: botocore.exceptions.ClientError, action: str) -> ProviderError:
    """The provider error for a boto3 ``ClientError``: config (non-retryable), quota (non-retryable) or
    plain (retryable). The message names the AWS error code and what to check."""
    err = e.response.get("Error", {})
    code = str(err.get("Code") or "Unknown")
    message = str(err.get("Message") or e)
    if code in AUTH_ERROR_CODES:
        return ProviderConfigError(
            f"aws provider: {action} refused: {code}: {message} (check the AWS credentials and the IAM "
            "permissions of the worker: environment, ~/.aws/credentials, instance role)"
        )
    if code in QUOTA_ERROR_CODES:
        return ProviderQuotaError(
            f"aws provider: {action} refused: {code}: {message} (an EC2 quota is reached: raise it in "
            "Service Quotas or lower max_servers)"
        )
    if code.startswith(CONFIG_ERROR_PREFIXES):
        return ProviderConfigError(
            f"aws provider: {action} refused: {code}: {message} (check the pool's provider_options)"
        )
    return ProviderError(f"aws provider: {action} failed: {code}: {message}")


def _tag_dict(instance: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags") or []}


class EC2Provider:
    """Provider driver for EC2 (see the module docstring). One per (region, endpoint) setting;
    thread-safe (boto3 clients are; the session and client are created once, under a lock)."""

    name = "aws"

    def __init__(self, region: str | None = None, endpoint_url: str | None = None):
        self.region = region
        self.endpoint_url = endpoint_url
        self._client: Any = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ client and errors

    def client(self) -> Any:
        """The EC2 client. Credentials and region come from boto3's standard chain (a `region` given to
        the driver overrides the chain's); raises ProviderConfigError when no region is configured."""
        with self._lock:
            if self._client is None:
                import boto3  # imported when first needed: a fifth of a second of every CLI start otherwise
                import botocore.config

                session = boto3.session.Session(region_name=self.region)
                if session.region_name is None:
                    raise ProviderConfigError(
                        "aws provider: no AWS region configured (set AWS_REGION or POOLCTL_AWS_REGION)"
                    )
                config = botocore.config.Config(
                    retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=20
                )
                self._client = session.client("ec2", endpoint_url=self.endpoint_url, config=config)
            return self._client

    def _call(self, action: str, fn: Any, *, not_found: str | None = None, **kwargs: Any) -> Any:
        """Call boto3 `fn`, turning its errors into provider errors; None when the error code starts with
        `not_found` (e.g. ``InvalidInstanceID``: the instance is unknown)."""
        try:
            return fn(**kwargs)
        except botocore.exceptions.ClientError as e:
            if not_found and str(e.response.get("Error", {}).get("Code", "")).startswith(not_found):
                return None
            raise classify_client_error(e, action) from e
        except (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError) as e:
            raise ProviderConfigError(
                f"aws provider: {action}: no usable AWS credentials ({e}); configure the standard AWS "
                "chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance role)"
            ) from e
        except botocore.exceptions.BotoCoreError as e:
            raise ProviderError(f"aws provider: {action} failed: {e}") from e

    @staticmethod
    def options(raw: dict[str, Any]) -> AwsProviderOptions:
        """`raw` provider options validated by their declared schema; ProviderConfigError names the field."""
        try:
            return AwsProviderOptions.model_validate(raw)
        except ValidationError as e:
            problems = "; ".join(
                f"provider_options.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
            )
            raise ProviderConfigError(f"aws provider: invalid options: {problems}") from e

    # ------------------------------------------------------------ describe helpers

    def _describe(self, filters: list[dict[str, Any]], ids: list[str] | None = None) -> list[dict[str, Any]]:
        ec2 = self.client()
        kwargs: dict[str, Any] = {"Filters": filters} if filters else {}
        if ids:
            kwargs["InstanceIds"] = ids
        out: list[dict[str, Any]] = []
        while True:
            page = self._call(
                "DescribeInstances", ec2.describe_instances, not_found="InvalidInstanceID", **kwargs
            )
            if page is None:
                return []
            for reservation in page.get("Reservations", []):
                out.extend(reservation.get("Instances", []))
            token = page.get("NextToken")
            if not token:
                return out
            kwargs["NextToken"] = token

    def _info(self, instance: dict[str, Any]) -> ServerInfo:
        tags = _tag_dict(instance)
        ec2_state = instance.get("State", {}).get("Name", "unknown")
        state = {"pending": ServerState.PENDING, "running": ServerState.RUNNING}.get(
            ec2_state, ServerState.TERMINATED
        )
        private_ip = instance.get("PrivateIpAddress") or ""
        public_ip = instance.get("PublicIpAddress") or ""
        host = public_ip if tags.get(TAG_ADDRESS) == "public" else private_ip
        launched = instance.get("LaunchTime")
        created = launched if isinstance(launched, datetime) else datetime.now(UTC)
        return ServerInfo(
            server_id=instance["InstanceId"],
            provider=self.name,
            pool=tags.get(TAG_POOL_KEY, ""),
            idempotency_key=tags.get(TAG_KEY, ""),
            host=host,
            port=int(tags.get(TAG_PORT, "80")),
            state=state,
            created_at=created if created.tzinfo else created.replace(tzinfo=UTC),
            details={
                "ec2_state": ec2_state,
                "instance_type": instance.get("InstanceType"),
                "image_id": instance.get("ImageId"),
                "availability_zone": instance.get("Placement", {}).get("AvailabilityZone"),
                "private_ip": private_ip or None,
                "public_ip": public_ip or None,
                "managed": tags.get(TAG_MANAGED_BY) == MANAGED_BY,
                "tags": tags,
            },
        )

    # ------------------------------------------------------------ provision

    def _find_by_key(self, request: ProvisionRequest) -> dict[str, Any] | None:
        found = self._describe(
            [
                {"Name": f"tag:{TAG_KEY}", "Values": [key_tag_value(request.idempotency_key)]},
                {"Name": f"tag:{TAG_POOL_KEY}", "Values": [request.pool]},
            ]
        )
        if not found:
            return None
        # a live instance wins over a terminated one; then the first launched for the key
        found.sort(
            key=lambda i: (
                i.get("State", {}).get("Name") not in ("pending", "running"),
                str(i.get("LaunchTime")),
                i["InstanceId"],
            )
        )
        return found[0]

    @staticmethod
    def tags_for(request: ProvisionRequest, opts: AwsProviderOptions) -> dict[str, str]:
        """The tags an instance of `request` carries (the pool's own `tags` first; poolctl's win)."""
        team, _, pool = request.pool.partition("/")
        return {
            **opts.tags,
            "Name": f"poolctl-{team}-{pool}",
            TAG_MANAGED_BY: MANAGED_BY,
            TAG_TEAM: team,
            TAG_POOL: pool,
            TAG_POOL_KEY: request.pool,
            TAG_KEY: key_tag_value(request.idempotency_key),
            TAG_PORT: str(opts.port),
            TAG_ADDRESS: opts.address,
        }

    def _run_instance(self, request: ProvisionRequest, opts: AwsProviderOptions) -> dict[str, Any]:
        existing = self._find_by_key(request)
        if existing is not None:
            return existing
        tags = [{"Key": k, "Value": v} for k, v in self.tags_for(request, opts).items()]
        kwargs: dict[str, Any] = {
            "ImageId": opts.image_id,
            "InstanceType": opts.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": client_token_for(request.idempotency_key),
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
        }
        if opts.subnet_id:
            kwargs["SubnetId"] = opts.subnet_id
        if opts.security_group_ids:
            kwargs["SecurityGroupIds"] = opts.security_group_ids
        if opts.key_name:
            kwargs["KeyName"] = opts.key_name
        if opts.user_data:
            kwargs["UserData"] = opts.user_data
        if opts.iam_instance_profile:
            profile = opts.iam_instance_profile
            kwargs["IamInstanceProfile"] = (
                {"Arn": profile} if profile.startswith("arn:") else {"Name": profile}
            )
        reply = self._call("RunInstances", self.client().run_instances, **kwargs)
        return reply["Instances"][0]

    def _wait_running(self, instance: dict[str, Any], opts: AwsProviderOptions) -> dict[str, Any]:
        deadline = time.monotonic() + opts.running_timeout_s
        iid = instance["InstanceId"]
        while instance.get("State", {}).get("Name") == "pending":
            if time.monotonic() >= deadline:
                raise ProviderError(
                    f"aws provider: instance {iid} still pending after {opts.running_timeout_s:.0f}s"
                )
            time.sleep(POLL_INTERVAL_S)
            found = self._describe([], ids=[iid])
            if found:
                instance = found[0]
        return instance

    def _provision_blocking(self, request: ProvisionRequest, opts: AwsProviderOptions) -> ServerInfo:
        return self._info(self._wait_running(self._run_instance(request, opts), opts))

    async def provision(self, request: ProvisionRequest) -> ServerInfo:
        """Launch (or find again) the instance of `request.idempotency_key` and wait until it runs."""
        opts = self.options(request.options)
        return await asyncio.to_thread(self._provision_blocking, request, opts)

    # ------------------------------------------------------------ terminate / describe / list

    def _describe_one(self, server_id: str) -> dict[str, Any] | None:
        if not server_id.startswith("i-"):
            return None
        found = self._describe([], ids=[server_id])
        return found[0] if found else None

    def _terminate_blocking(self, server_id: str) -> ServerInfo | None:
        instance = self._describe_one(server_id)
        if instance is None:
            return None
        if _tag_dict(instance).get(TAG_MANAGED_BY) != MANAGED_BY:
            raise ProviderConfigError(
                f"aws provider: refusing to terminate {server_id}: it has no {TAG_MANAGED_BY}={MANAGED_BY} tag"
            )
        if instance.get("State", {}).get("Name") != "terminated":
            done = self._call(
                "TerminateInstances",
                self.client().terminate_instances,
                not_found="InvalidInstanceID",
                InstanceIds=[server_id],
            )
            if done is None:
                return None  # gone between describe and terminate
            instance = self._describe_one(server_id) or instance
        return self._info(instance).model_copy(update={"state": ServerState.TERMINATED})

    async def terminate(self, server_id: str) -> ServerInfo | None:
        """Terminate an instance poolctl launched. Terminated or unknown instances succeed (None if unknown)."""
        return await asyncio.to_thread(self._terminate_blocking, server_id)

    async def describe(self, server_id: str) -> ServerInfo | None:
        instance = await asyncio.to_thread(self._describe_one, server_id)
        return None if instance is None else self._info(instance)

    async def list_servers(self, pool: str | None = None) -> list[ServerInfo]:
        """Instances tagged as poolctl's (all states EC2 still reports), optionally of one pool (``team/pool``)."""
        filters = [{"Name": f"tag:{TAG_MANAGED_BY}", "Values": [MANAGED_BY]}]
        if pool is not None:
            filters.append({"Name": f"tag:{TAG_POOL_KEY}", "Values": [pool]})
        instances = await asyncio.to_thread(self._describe, filters)
        return [self._info(i) for i in instances]
