"""The spec corpus: every file in tests/data/bad_specs/ is refused by `poolctl validate` and `poolctl apply`
with exit code 2 and the message in its `.expect` file, and leaves the store and Temporal unchanged; every
file in tests/data/good_specs/ (BOM, CRLF, anchors, JSON, several documents, IPv6, scale to zero) is valid.

Each command runs once per file in process (Typer's runner, the real CLI code) and once as a real
subprocess for all files together (a subprocess per file would cost ~3 s of CPU each on this machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa_core
from temporalio.client import Client
from typer.main import get_command

from poolctl.settings import Settings
from poolctl.starter.cli import app
from poolctl.starter.specfile import load_spec_files, parse_spec
from poolctl.store import inventory
from poolctl.store.db import get_engine, migrate, session_scope
from poolctl.store.models import Base
from tests.helpers import eventually

DATA = Path(__file__).parent / "data"
BAD = sorted((DATA / "bad_specs").glob("*.yaml"))
GOOD = sorted((DATA / "good_specs").glob("*.yaml"))
POOLCTL = str(Path(sys.executable).parent / "poolctl")
CLI = get_command(app)  # built once: Typer's CliRunner rebuilds the whole command tree on every call (~0.3 s)


@dataclass
class Run:
    exit_code: int
    output: str


def run_cli(*args: str) -> Run:
    """`poolctl ARGS` in this process: the real CLI code, stdout and stderr captured together."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = CLI.main(list(args), prog_name="poolctl", standalone_mode=False)
        except SystemExit as e:
            code = e.code
    return Run(int(code or 0), out.getvalue())


def _flat(text: str) -> str:
    return " ".join(text.split())


def expected(path: Path) -> str:
    return _flat(path.with_suffix(".expect").read_text())


def check_refusal(path: Path, exit_code: int, output: str) -> None:
    """Exit 2, one message naming the file and the expected problem, nothing raw from the terminal's
    control set, no traceback."""
    assert exit_code == 2, (path.name, output)
    flat = _flat(output)
    assert str(path) in flat, (path.name, output)
    assert expected(path) in flat, (path.name, expected(path), output)
    assert "Traceback" not in output, (path.name, output)
    assert not any(c in output for c in "\x1b\x07\x00\r\u202e"), (path.name, repr(output))


def test_the_corpus_has_sixty_bad_specs_each_with_its_message() -> None:
    assert len(BAD) >= 60
    for path in BAD:
        assert path.with_suffix(".expect").read_text().strip(), path.name


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_validate_refuses_each_bad_spec(path: Path) -> None:
    result = run_cli("validate", "-f", str(path))
    check_refusal(path, result.exit_code, result.output)


def test_validate_as_a_subprocess_refuses_every_bad_spec_without_a_raw_control_character() -> None:
    args = [a for p in BAD for a in ("-f", str(p))]
    proc = subprocess.run([POOLCTL, "validate", *args], capture_output=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert not any(b in proc.stderr + proc.stdout for b in (b"\x1b", b"\x07", b"\x00", b"\r")), proc.stderr
    err = proc.stderr.decode()
    assert "Traceback" not in err
    for path in BAD:
        assert str(path) in err, path.name
        if not path.name.startswith("conflict-"):  # valid alone: their conflicts now meet other files' pools
            assert f"{path}: {expected(path)}" in _flat(err), (path.name, expected(path))


def test_good_but_tricky_specs_stay_valid() -> None:
    proc = subprocess.run(
        [POOLCTL, "validate", *[a for p in GOOD for a in ("-f", str(p))]], capture_output=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr.decode()
    docs = {p.stem: d for p, d in zip(GOOD, load_spec_files(GOOD), strict=True)}
    assert len(docs) >= 7
    assert [p.name for p in docs["anchors-and-merge-keys"].pools] == ["web", "api"]
    assert docs["anchors-and-merge-keys"].pools[1].max_servers == 6
    assert (
        docs["anchors-and-merge-keys"].pools[1].health_check
        == docs["anchors-and-merge-keys"].pools[0].health_check
    )
    assert [p.name for p in docs["several-documents"].pools] == ["web", "api"]
    assert docs["ipv6"].pools[0].load_balancers[0].ip_address == "::1"
    assert docs["scale-to-zero"].pools[0].initial_desired == 0
    numbers = docs["numbers-in-every-yaml-form"].pools[0]
    assert (numbers.min_servers, numbers.max_servers, numbers.heal_after_s) == (
        1,
        10,
        15.0,
    )  # YAML 1.2: 010 = 10
    bools = docs["yes-no-for-booleans"].pools[0]
    assert (bools.auto_healing, bools.paused, bools.policies[0].dry_run) == (False, True, True)
    assert docs["bom"].team == "good-bom" and docs["crlf"].pools[0].max_servers == 3


def _row_counts(url: str) -> dict[str, int]:
    with get_engine(url).connect() as c:
        return {
            t.name: int(c.execute(sa_core.select(sa_core.func.count()).select_from(t)).scalar_one())
            for t in Base.metadata.sorted_tables
        }


SEED = """\
pools:
  - name: seeded
    min_servers: 0
    load_balancers: [{name: seeded-lb, port: 18500}]
"""


def _seed_store(settings: Settings) -> None:
    """One pool already applied (written straight into the read model: this test runs no worker)."""
    migrate(settings.resolved_database_url)
    doc = parse_spec(SEED, "seed.yaml").model_copy(update={"team": settings.team})
    with session_scope(settings.resolved_database_url) as s:
        inventory.apply_document(s, doc)


async def _workflows(client: Client, task_queue: str) -> list[str]:
    return sorted([w.id async for w in client.list_workflows(f'TaskQueue = "{task_queue}"')])


@pytest.mark.temporal
def test_apply_refuses_every_bad_spec_and_leaves_the_store_and_temporal_unchanged(
    cli_env: Settings, client: Client
) -> None:
    _seed_store(cli_env)
    url = cli_env.resolved_database_url
    rows = _row_counts(url)
    assert rows["server_pools"] == 1 and rows["load_balancers"] == 1
    for path in BAD:
        result = run_cli("apply", "-f", str(path), "--no-wait")
        check_refusal(path, result.exit_code, result.output)
        assert _row_counts(url) == rows, path.name

    # the same, all files at once, through a real `poolctl apply` process
    proc = subprocess.run(
        [POOLCTL, "apply", "--no-wait", *[a for p in BAD for a in ("-f", str(p))]],
        capture_output=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert proc.returncode == 2, proc.stderr.decode()[-2000:]
    assert b"Traceback" not in proc.stderr and b"\x1b" not in proc.stderr
    assert _row_counts(url) == rows

    async def temporal_unchanged() -> None:
        # visibility is eventually consistent: a sentinel started now must show up, and nothing else has
        sentinel = f"sentinel-{uuid.uuid4().hex[:8]}"
        handle = await client.start_workflow("Sentinel", id=sentinel, task_queue=cli_env.task_queue)
        try:
            seen = await eventually(
                lambda: _workflows(client, cli_env.task_queue), lambda ids: sentinel in ids, timeout=30
            )
            assert seen == [sentinel]
        finally:
            await handle.terminate("test sentinel")

    asyncio.run(temporal_unchanged())


@pytest.mark.temporal
def test_apply_refuses_a_balancer_on_a_port_a_stored_pool_listens_on(
    cli_env: Settings, client: Client, tmp_path: Path
) -> None:
    _seed_store(cli_env)
    rows = _row_counts(cli_env.resolved_database_url)
    spec = tmp_path / "clash.yaml"
    spec.write_text(
        "pools:\n  - name: other\n    load_balancers: [{name: lb, port: 19600, admin_port: 18500}]\n"
    )
    for command in (["validate"], ["apply", "--no-wait"]):
        result = run_cli(*command, "-f", str(spec))
        assert result.exit_code == 2, result.output
        assert (
            "pools[0] (other).load_balancers[0] (lb).admin_port: 127.0.0.1:18500 is already taken by the port of "
            f"load balancer 'seeded-lb' of pool {cli_env.team}/seeded (already applied)"
        ) in _flat(result.output)
    assert _row_counts(cli_env.resolved_database_url) == rows
    # re-applying the stored pool itself is no conflict with its own earlier version
    same = tmp_path / "same.yaml"
    same.write_text(f"team: {cli_env.team}\n" + SEED)
    assert run_cli("validate", "-f", str(same)).exit_code == 0


def test_two_files_with_balancers_on_one_port_are_refused_together(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("team: one\npools:\n  - name: web\n    load_balancers: [{name: lb, port: 18600}]\n")
    b.write_text("team: two\npools:\n  - name: api\n    load_balancers: [{name: lb, port: 18600}]\n")
    result = run_cli("validate", "-f", str(a), "-f", str(b))
    assert result.exit_code == 2
    assert (
        f"{b}: pools[0] (api).load_balancers[0] (lb).port: 127.0.0.1:18600 is already taken by the port of "
        f"load balancer 'lb' of pools[0] (web) in {a}"
    ) in _flat(result.output)
    b.write_text("team: one\npools:\n  - name: web\n")
    result = run_cli("validate", "-f", str(a), "-f", str(b))
    assert result.exit_code == 2 and f"pool one/web is also defined in {a}" in _flat(result.output)
