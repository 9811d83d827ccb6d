"""docker-compose.yml and the Dockerfile, checked by parsing (no Docker engine runs here): services, images,
dependencies with conditions, ports, the worker's environment (real settings) and the README's walk-through."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from poolctl import search_attributes
from poolctl.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def depends(service: dict[str, Any]) -> dict[str, str]:
    return {name: cond["condition"] for name, cond in (service.get("depends_on") or {}).items()}


def test_services_and_images(compose: dict[str, Any]) -> None:
    s = services(compose)
    assert set(s) == {"postgresql", "temporal", "temporal-init", "temporal-ui", "worker", "balancer"}
    assert s["postgresql"]["image"].startswith("postgres:")
    assert s["temporal"]["image"].startswith("temporalio/auto-setup:")
    assert s["temporal-init"]["image"].startswith("temporalio/admin-tools:")
    assert s["temporal-ui"]["image"].startswith("temporalio/ui:")
    assert s["worker"]["build"] == "." and s["worker"]["image"] == "poolctl:latest"
    assert s["balancer"]["image"] == "poolctl:latest"  # the image the worker service builds
    # every image is pinned to a version (no implicit :latest from a registry)
    for name in ("postgresql", "temporal", "temporal-init", "temporal-ui"):
        assert re.fullmatch(r"[\w./-]+:\d[\w.-]*", s[name]["image"]), name


def test_dependencies_wait_for_health_and_init(compose: dict[str, Any]) -> None:
    s = services(compose)
    assert s["postgresql"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert depends(s["temporal"]) == {"postgresql": "service_healthy"}
    assert depends(s["temporal-init"]) == {"temporal": "service_started"}
    assert depends(s["temporal-ui"]) == {"temporal": "service_started"}
    assert depends(s["worker"]) == {
        "postgresql": "service_healthy",
        "temporal-init": "service_completed_successfully",
    }
    assert depends(s["balancer"]) == {"worker": "service_started"}
    env = s["temporal"]["environment"]
    assert (env["DB"], env["POSTGRES_SEEDS"]) == ("postgres12", "postgresql")


def test_init_registers_every_search_attribute(compose: dict[str, Any]) -> None:
    script = " ".join(services(compose)["temporal-init"]["command"])
    listed = re.search(r"for a in ([\w ]+); do", script)
    assert listed is not None
    assert listed.group(1).split() == [k.name for k in search_attributes.ALL]
    assert "temporal operator search-attribute create" in script and "--type Keyword" in script
    assert "temporal operator cluster health" in script


def test_ports(compose: dict[str, Any]) -> None:
    s = services(compose)
    assert s["temporal"]["ports"] == ["7233:7233"]
    assert s["temporal-ui"]["ports"] == ["8233:8080"]
    assert s["balancer"]["ports"] == ["8080:8080"]
    # the worker scales to N replicas: no fixed name, no host port
    assert "ports" not in s["worker"] and "container_name" not in s["worker"]
    assert not any("container_name" in svc for svc in s.values())


def test_worker_environment_names_real_settings(compose: dict[str, Any]) -> None:
    s = services(compose)
    env = s["worker"]["environment"]
    fields = set(Settings.model_fields)
    poolctl_names = [k for k in env if k.startswith("POOLCTL_")]
    assert poolctl_names, "the worker is configured through POOLCTL_ settings"
    for name in poolctl_names:
        assert name.removeprefix("POOLCTL_").lower() in fields, f"{name} is not a Settings field"
    assert set(env) - set(poolctl_names) <= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert env["POOLCTL_TEMPORAL_ADDRESS"] == "temporal:7233"
    assert env["POOLCTL_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgresql:5432/poolctl" in env["POOLCTL_DATABASE_URL"]
    assert env["POOLCTL_BALANCER_ADMIN_HOST"] == "balancer"
    # Temporal is remote here: the payload key must be given (compose refuses to start without it)
    assert env["POOLCTL_PAYLOAD_KEY"].startswith("${POOLCTL_PAYLOAD_KEY:?")
    assert env["POOLCTL_TEAM_AUTH_KEY"].startswith(
        "${POOLCTL_TEAM_AUTH_KEY:?"
    )  # the same for the team auth key
    # the worker's settings parse as the worker would read them
    values = {
        k.removeprefix("POOLCTL_").lower(): v
        for k, v in env.items()
        if k.startswith("POOLCTL_") and k not in ("POOLCTL_PAYLOAD_KEY", "POOLCTL_TEAM_AUTH_KEY")
    }
    parsed = Settings.model_validate(values)
    assert parsed.temporal_address == "temporal:7233" and parsed.balancer_admin_host == "balancer"
    # the balancer and the worker share the admin token
    assert s["balancer"]["environment"]["POOLCTL_BALANCER_TOKEN"] == env["POOLCTL_BALANCER_TOKEN"]
    cmd = s["balancer"]["command"]
    assert cmd[:3] == ["python", "-m", "poolctl.balancer"] and "--allow-remote-admin" in cmd
    assert (
        cmd[cmd.index("--listen") + 1] == "0.0.0.0:8080" and cmd[cmd.index("--admin") + 1] == "0.0.0.0:9080"
    )


def test_dockerfile_runs_the_worker() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    assert "pip install --no-cache-dir '.[fast]'" in text  # uvloop for the built-in balancer
    # production runs the compiled hot path (issue 13's CPU figure): built in a stage with a compiler,
    # and the image's build fails if the installed package does not use it
    assert re.search(r"^FROM python:3\.11\S* AS native", text, re.M)
    assert "from poolctl.balancer.native import build; build()" in text
    assert "COPY --from=native" in text and "native.active()" in text
    assert 'CMD ["python", "-m", "poolctl.worker"]' in text
    assert ".venv" in (ROOT / ".dockerignore").read_text()


def test_readme_production_section_matches_the_compose_file(compose: dict[str, Any]) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Production") :]
    section = section[: section.find("\n## ", 1)] if "\n## " in section[1:] else section
    assert "docker compose up -d --build" in section
    assert "docker compose up -d --scale worker=3" in section
    for name in services(compose):
        assert f"`{name}`" in section, f"README production section does not mention {name}"
    for port in ("7233", "8233", "8080"):
        assert port in section
    for var in services(compose)["worker"]["environment"]:
        if var.startswith("POOLCTL_"):
            assert var in readme, f"README does not document {var}"
