"""A real moto server (moto[server], the AWS API emulator) on a free loopback port, for the EC2 and
CloudWatch tests; and the dummy-credential environment boto3 needs to talk to it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

VENV_BIN = Path(sys.executable).parent
REGION = "us-east-1"

# moto validates AMI ids and instance types only when asked (moto.settings): without these an
# invalid AMI would launch fine and the non-retryable error path could not be exercised for real.
VALIDATION_ENV = {"MOTO_ENABLE_AMI_VALIDATION": "true", "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "true"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MotoServer:
    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def start_moto(log_path: Path, **extra_env: str) -> MotoServer:
    """Start `moto_server` on 127.0.0.1 and wait until it answers (up to 60 s on a busy machine)."""
    port = free_port()
    env = {**os.environ, **VALIDATION_ENV, **extra_env}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"{url}/moto-api/data.json", timeout=2, trust_env=False).status_code == 200:
                return MotoServer(url, proc)
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"moto_server did not answer on {url} within 60s; see {log_path}")
        time.sleep(0.1)


def aws_test_env(
    monkeypatch: pytest.MonkeyPatch, access_key: str = "testing", secret: str = "testing"
) -> None:
    """Dummy credentials and a region for boto3's standard chain, nothing read from ~/.aws, and no
    instance-metadata lookups (no traffic off the loopback)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/poolctl-test-aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/poolctl-test-aws-credentials")


def image_id(endpoint: str) -> str:
    """An Amazon Linux 2 AMI id of the moto server's built-in public images (a filtered, small answer)."""
    import boto3

    ec2 = boto3.client(
        "ec2",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    images = ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "name", "Values": ["amzn2-ami-hvm-*"]}])
    return sorted(i["ImageId"] for i in images["Images"])[0]
