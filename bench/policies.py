"""How many scaling policies at a 15 s interval can one worker sustain with evaluation lag p99 under 1 s?

    .venv/bin/python bench/policies.py --policies 500 --interval 15 --duration 60

Starts a Temporal dev server (as the tests do) and one in-process worker, then N PolicyWorkflows on one
pool. Each policy's metric source is `http_json` against one aiohttp subprocess (cheap: the point is the
loop, not the metric) that records when each policy's read arrives. Lag of an evaluation = its actual
read time minus its scheduled time (the previous read + the interval; the loop's timer starts after an
evaluation ends, so the lag includes the evaluation's own duration). Prints p50/p99/max lag, and the
history events per policy per hour over the measured window (the history length of a sample of the
policies, read with the client's fetch_history at the window's start and end). The window starts after
`--warmup` and once every policy has been evaluated twice (the start burst — each policy's first decision
signals the one pool — is behind it), at most `--warmup-max` seconds after the starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def serve() -> None:
    """The metric subprocess: GET /m/{i} -> {"v": 50} (records arrival times); GET /stats -> them all."""
    from aiohttp import web

    arrivals: dict[str, list[float]] = {}

    async def metric(request: web.Request) -> web.Response:
        arrivals.setdefault(request.match_info["i"], []).append(time.time())
        return web.json_response({"v": 50})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(arrivals)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/m/{i}", metric)
        app.router.add_get("/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(json.dumps({"port": site._server.sockets[0].getsockname()[1]}), flush=True)  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(main())


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def history_lengths(client: Any, workflow_ids: list[str]) -> list[int]:
    """The number of history events of each workflow (all its runs' latest: continue-as-new starts anew)."""
    out = []
    for wf_id in workflow_ids:
        out.append(len([e async for e in client.get_workflow_handle(wf_id).fetch_history_events()]))
    return out


async def run(args: argparse.Namespace) -> dict:
    import httpx
    from temporalio.testing import WorkflowEnvironment

    from poolctl import search_attributes
    from poolctl.domain.names import policy_workflow_id
    from poolctl.domain.policy_spec import PolicySpec
    from poolctl.domain.policy_state import PolicyInput
    from poolctl.domain.pool_spec import PoolSpec
    from poolctl.settings import Settings
    from poolctl.starter import pool_ops
    from poolctl.store.db import migrate
    from poolctl.temporal_client import DATA_CONVERTER, rebuild_client
    from poolctl.worker import build_worker
    from poolctl.workflows.policy import PolicyWorkflow

    server = subprocess.Popen(  # noqa: ASYNC220 - started once
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    port = json.loads(server.stdout.readline())["port"]
    tmp = Path(tempfile.mkdtemp(prefix="bench-policies-"))
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
        search_attributes=search_attributes.ALL,
        data_converter=DATA_CONVERTER,
    )
    try:
        settings = Settings(
            state_dir=tmp / "state",
            database_url=f"sqlite:///{tmp / 'poolctl.db'}",
            temporal_address=env.client.service_client.config.target_host,
            task_queue=f"bench-{uuid.uuid4().hex[:6]}",
            team="bench",
        )
        settings.ensure_state_dir()
        migrate(settings.resolved_database_url)
        pool = PoolSpec(name="bench", provider="fake", min_servers=1, max_servers=10, desired_servers=1)
        client = rebuild_client(env.client, settings)  # signs with the team auth key (state dir)
        async with build_worker(client, settings):
            await pool_ops.apply_pool(client, settings, "bench", pool)
            t0 = time.time()
            sem = asyncio.Semaphore(50)

            async def start(i: int) -> None:
                spec = PolicySpec.model_validate(
                    {
                        "name": f"p{i}",
                        "type": "custom",
                        "source": {"kind": "http_json", "url": f"http://127.0.0.1:{port}/m/{i}", "path": "v"},
                        "target": 50,
                        "evaluation_interval": args.interval,
                    }
                )
                async with sem:  # the policy loops alone, outside the pool's spec: the loop is measured here
                    await client.start_workflow(
                        PolicyWorkflow.run,
                        PolicyInput(
                            team="bench", pool="bench", spec=spec, history_budget=settings.history_budget
                        ),
                        id=policy_workflow_id("bench", "bench", spec.name),
                        task_queue=settings.task_queue,
                    )

            await asyncio.gather(*(start(i) for i in range(args.policies)))
            started_in = time.time() - t0
            print(
                f"started {args.policies} policy workflows in {started_in:.1f}s; measuring {args.duration:.0f}s",
                flush=True,
            )
            # the first evaluation of each policy sends its first recommendation and records a decision:
            # let that burst pass, then measure the steady state
            # then wait until every policy has been evaluated twice (its start, first decision and next loop
            # are behind it), at most --warmup-max: the window measures the steady state
            await asyncio.sleep(args.warmup)
            async with httpx.AsyncClient() as http:
                while time.time() - t0 < args.warmup_max:
                    seen = (await http.get(f"http://127.0.0.1:{port}/stats")).json()
                    if sum(1 for v in seen.values() if len(v) >= 2) >= args.policies:
                        break
                    await asyncio.sleep(1.0)
            measure_from = time.time()
            warmed_up_in = measure_from - t0
            step = max(1, args.policies // args.history_sample)
            sample = [policy_workflow_id("bench", "bench", f"p{i}") for i in range(0, args.policies, step)]
            before = await history_lengths(client, sample)
            await asyncio.sleep(max(0.0, measure_from + args.duration - time.time()))
            after = await history_lengths(client, sample)
            async with httpx.AsyncClient() as http:
                arrivals = (await http.get(f"http://127.0.0.1:{port}/stats")).json()
    finally:
        await env.shutdown()
        server.terminate()
    lags = []
    for times in arrivals.values():
        for a, b in zip(times, times[1:], strict=False):
            if b >= measure_from:
                lags.append(b - a - args.interval)
    expected = args.policies * args.duration / args.interval
    first = sorted(t[0] for t in arrivals.values() if t)
    burst = (first[-1] - first[0]) if first else 0.0
    return {
        "policies": args.policies,
        "interval_s": args.interval,
        "evaluations_measured": len(lags),
        "evaluations_expected": round(expected),
        "lag_p50_s": round(pct(lags, 50), 3),
        "lag_p99_s": round(pct(lags, 99), 3),
        "lag_max_s": round(max(lags), 3) if lags else None,
        "start_s": round(started_in, 1),
        "warmup_s": round(warmed_up_in, 1),
        "first_evaluations_spread_s": round(burst, 1),
        "policies_reporting": len(arrivals),
        "history_sample": len(before),
        "history_events_per_policy_per_hour": round(
            sum(b - a for a, b in zip(before, after, strict=True)) / len(before) * 3600 / args.duration, 1
        ),
        "history_events_per_policy_total_max": max(after),
    }


def main() -> None:
    if "--serve" in sys.argv:
        serve()
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policies", type=int, default=500)
    p.add_argument("--interval", type=float, default=15.0)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=30.0, help="seconds after the starts before measuring")
    p.add_argument(
        "--warmup-max",
        type=float,
        default=600.0,
        help="after --warmup, wait until every policy was evaluated twice, at most this long from the start",
    )
    p.add_argument("--history-sample", type=int, default=20, help="policies whose history length is read")
    args = p.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    ok = result["lag_p99_s"] < 1.0
    print(
        f"{'PASS' if ok else 'FAIL'}: {args.policies} policies at {args.interval:g}s, lag p99 {result['lag_p99_s']}s"
    )


if __name__ == "__main__":
    main()
