"""Reaction time of a target-tracking CPU policy to a step in load, on real local servers.

    .venv/bin/python bench/reaction.py --interval 5 --trials 3

Starts a Temporal dev server (as the tests do) and an in-process worker, applies a pool of 2 local servers
with a policy (target 50 % CPU), then pins every server's CPU at 90 % (the step: `POST /admin/load`) and
measures, per trial:
  breach -> decision : from the step to the policy's scale-out decision (at most one interval + a read)
  decision -> serving: from that decision to every new server answering GET /
then drops the load and lets the pool go back to 2 servers before the next trial.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SPEC = """
pools:
  - name: bench
    provider: local
    min_servers: 2
    max_servers: 4
    desired_servers: 2
    policies:
      - name: cpu
        type: cpu
        target: 50
        evaluation_interval: {interval}
        scale_out_cooldown_s: 1
        scale_in_cooldown_s: 1
        stabilization_window_s: 1
"""


async def run(args: argparse.Namespace) -> list[tuple[float, float]]:
    import httpx
    from temporalio.testing import WorkflowEnvironment

    from poolctl import search_attributes
    from poolctl.settings import Settings
    from poolctl.starter import policy_ops, pool_ops
    from poolctl.starter.specfile import parse_spec
    from poolctl.store import inventory
    from poolctl.store.db import migrate, session_scope
    from poolctl.temporal_client import DATA_CONVERTER, rebuild_client
    from poolctl.worker import build_worker

    tmp = Path(tempfile.mkdtemp(prefix="bench-reaction-"))
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
        search_attributes=search_attributes.ALL,
        data_converter=DATA_CONVERTER,
    )
    settings = Settings(
        state_dir=tmp / "state",
        database_url=f"sqlite:///{tmp / 'poolctl.db'}",
        temporal_address=env.client.service_client.config.target_host,
        task_queue=f"bench-{uuid.uuid4().hex[:6]}",
        team="bench",
        reconcile_interval_s=2.0,
    )
    settings.ensure_state_dir()
    migrate(settings.resolved_database_url)
    client = rebuild_client(env.client, settings)  # signs with the team auth key (state dir)
    results: list[tuple[float, float]] = []

    def servers() -> list[str]:
        with session_scope(settings.resolved_database_url) as s:
            return [
                f"http://{r.host}:{r.port}"
                for r in inventory.list_servers(s, "bench", "bench")
                if r.state == "running"
            ]

    async def pin(http: httpx.AsyncClient, cpu: float | None) -> None:
        for u in servers():
            try:
                await http.post(f"{u}/admin/load", json={"cpu_percent": cpu})
            except httpx.HTTPError:
                pass  # terminated a moment ago

    async def size() -> int:
        v = await pool_ops.query_status(client, "bench", "bench")
        return -1 if v is None or v.scaling else v.current

    try:
        async with build_worker(client, settings), httpx.AsyncClient(timeout=2) as http:
            doc = parse_spec(SPEC.format(interval=args.interval), "bench.yaml")
            doc = doc.model_copy(update={"team": "bench"})
            await pool_ops.apply_documents(client, settings, [doc])
            for trial in range(args.trials):
                while await size() != 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
                await pin(http, 50)
                await asyncio.sleep(args.interval + 1)  # a quiet evaluation first
                known = set(servers())
                breach = datetime.now(UTC)
                await pin(http, 90)
                decision = None
                while decision is None:
                    state = await policy_ops.query_policy(client, "bench", "bench", "cpu")
                    ups = [d for d in state.decisions if d.direction.value == "up" and d.at >= breach]
                    decision = ups[0] if ups else None
                    await asyncio.sleep(0.05)
                want = decision.desired
                while True:
                    urls = servers()
                    new = [u for u in urls if u not in known]
                    if len(urls) >= min(want, 4):
                        answers = await asyncio.gather(
                            *(http.get(u + "/") for u in new), return_exceptions=True
                        )
                        if all(not isinstance(a, BaseException) and a.status_code == 200 for a in answers):
                            break
                    await asyncio.sleep(0.05)
                serving = datetime.now(UTC)
                t1 = (decision.at - breach).total_seconds()
                t2 = (serving - decision.at).total_seconds()
                results.append((t1, t2))
                print(
                    f"trial {trial + 1}: breach -> decision {t1:.2f}s; decision -> {len(new)} new server(s) "
                    f"answering {t2:.2f}s (pool {len(known)} -> {len(urls)})",
                    flush=True,
                )
                await pin(http, 10)  # load gone: back to 2
                t0 = time.monotonic()
                while await size() != 2 and time.monotonic() - t0 < 60:
                    await pin(http, 10)
                    await asyncio.sleep(0.5)
    finally:
        from poolctl.activities.providers.registry import kill_all_local_servers

        kill_all_local_servers(settings.state_dir)
        await env.shutdown()
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--interval", type=float, default=5.0, help="the policy's evaluation_interval (s)")
    p.add_argument("--trials", type=int, default=3)
    args = p.parse_args()
    results = asyncio.run(run(args))
    if results:
        d = [r[0] for r in results]
        s = [r[1] for r in results]
        print(
            f"interval {args.interval:g}s, {len(results)} trials: breach -> decision mean {statistics.mean(d):.2f}s "
            f"max {max(d):.2f}s; decision -> new servers answering mean {statistics.mean(s):.2f}s max {max(s):.2f}s"
        )


if __name__ == "__main__":
    main()
