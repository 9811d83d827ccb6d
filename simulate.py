"""Replay a recorded metric trace through the same decision code the live loop runs, on a modelled pool.

The model: the policy is evaluated every `evaluation_interval` seconds from the trace's first timestamp
to its last, seeing the latest trace value at or before that moment; the pool arbitrates the policy's
recommendation at once (as `PoolWorkflow` does when a recommendation arrives) and starts the cooldowns
at the decision time. New servers serve only after `boot_delay_s`, and their metrics count only once they
serve and the policy's `instance_warmup_s` has passed (the same readiness rule as the live read); a
scale-in removes booting servers first, then serving ones, immediately.

What the trace value means:
- default (`load_model=False`): the metric exactly as observed, whatever the capacity. This is what the
  live loop sees when it reads the same trace, so decisions match it one for one.
- `load_model=True`: the per-server average measured when `start` servers were serving; the simulated
  metric is `value * start / serving` (capped at 100 for cpu/memory percentages), so added capacity
  lowers it once booted. With no server serving, the metric is unavailable (nothing to scrape).
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel

from poolctl.domain.arbitration import CooldownState, arbitrate
from poolctl.domain.decision import Decision, Direction
from poolctl.domain.evaluation import PolicyState, evaluate_policy
from poolctl.domain.policy_spec import PolicySpec, ScrapeSource
from poolctl.domain.readiness import sample_server


class SimStep(BaseModel):
    """One evaluation of the simulation: what the policy saw, what it and the pool decided."""

    at: datetime
    trace_value: float
    metric: float | None
    current: int
    serving: int
    ready: int = 0
    desired: int
    policy_decision: Decision
    pool_decision: Decision

    @property
    def scaled(self) -> bool:
        return self.desired != self.current


def _aware(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def _parse_timestamp(text: str) -> datetime:
    text = text.strip()
    try:
        return datetime.fromtimestamp(float(text), tz=UTC)
    except ValueError:
        pass
    return _aware(datetime.fromisoformat(text))


def load_trace_csv(path: str | Path) -> list[tuple[datetime, float]]:
    """Read `timestamp,value` rows (ISO 8601 or epoch seconds; naive times are UTC; header optional)."""
    trace: list[tuple[datetime, float]] = []
    with open(path, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{lineno}: want 'timestamp,value', got {row!r}")
            try:
                at = _parse_timestamp(row[0])
                value = float(row[1])
            except ValueError as e:
                if lineno == 1 and not trace:
                    continue  # header
                raise ValueError(f"{path}:{lineno}: {e}") from e
            if trace and at < trace[-1][0]:
                raise ValueError(f"{path}:{lineno}: timestamps must not go backwards ({at.isoformat()})")
            trace.append((at, value))
    if not trace:
        raise ValueError(f"{path}: no samples")
    return trace


class _SimServer(BaseModel):
    server_id: str
    created_at: datetime
    booted_at: datetime


def simulate(
    spec: PolicySpec,
    trace: list[tuple[datetime, float]],
    *,
    start: int,
    boot_delay_s: float,
    pool_min: int,
    pool_max: int,
    load_model: bool = False,
) -> list[SimStep]:
    """Run `spec` over `trace` (sorted by time) with a pool of `start` servers. `dry_run` is ignored here.

    The policy sees the pool as the live read does (`domain.readiness`): a server is booting (health
    `initial`) until `boot_delay_s` after its creation, then healthy; its metrics count once it is healthy
    and `instance_warmup_s` has passed. A scrape source gets one value per ready server, any other
    source the pool-level value.
    """
    if not trace:
        return []
    if spec.dry_run:
        spec = spec.model_copy(update={"dry_run": False})
    points = [(_aware(at), v) for at, v in trace]
    t0, t_end = points[0][0], points[-1][0]
    interval = timedelta(seconds=spec.evaluation_interval)
    boot = timedelta(seconds=boot_delay_s)
    cap = 100.0 if spec.type in ("cpu", "memory") else None
    per_server = isinstance(spec.source, ScrapeSource)

    # the starting servers have booted and warmed up; one entry per server, oldest first
    warm = timedelta(seconds=spec.instance_warmup_s)
    servers = [
        _SimServer(server_id=f"s{n}", created_at=t0 - warm - boot, booted_at=t0 - warm) for n in range(start)
    ]
    created = start
    desired = start
    state = PolicyState()
    cooldowns = CooldownState()
    steps: list[SimStep] = []
    i = 0
    now = t0
    while now <= t_end:
        while i + 1 < len(points) and points[i + 1][0] <= now:
            i += 1
        value = points[i][1]
        serving = sum(1 for s in servers if s.booted_at <= now)
        metric: float | None = value
        if load_model:
            metric = None if serving == 0 else value * start / serving
            if metric is not None and cap is not None:
                metric = min(cap, metric)
        samples = [
            sample_server(
                s.server_id,
                created_at=s.created_at,
                health="healthy" if s.booted_at <= now else "initial",
                now=now,
                instance_warmup_s=spec.instance_warmup_s,
                value=metric if per_server else None,
            )
            for s in servers
        ]
        decision, state = evaluate_policy(
            spec,
            current=desired,
            metric=None if per_server else metric,
            now=now,
            state=state,
            servers=samples,
        )
        verdict = arbitrate(
            [decision.as_recommendation()],
            current=desired,
            pool_min=pool_min,
            pool_max=pool_max,
            now=now,
            cooldowns=cooldowns,
        )
        before = desired
        if verdict.direction is Direction.UP:
            for _ in range(verdict.desired - desired):
                servers.append(_SimServer(server_id=f"s{created}", created_at=now, booted_at=now + boot))
                created += 1
        elif verdict.direction is Direction.DOWN:
            servers.sort(key=lambda s: s.created_at)
            del servers[verdict.desired :]  # the newest (still booting first) go
        if verdict.direction is not Direction.NONE:
            cooldowns = cooldowns.after_decision(verdict)
            desired = verdict.desired
        steps.append(
            SimStep(
                at=now,
                trace_value=value,
                metric=decision.metric,
                current=before,
                serving=serving,
                ready=sum(1 for s in samples if s.ready),
                desired=desired,
                policy_decision=decision,
                pool_decision=verdict,
            )
        )
        now += interval
    return steps


def format_timeline(steps: list[SimStep]) -> list[str]:
    """One line per change of capacity (and the first step), with the reason."""
    lines = []
    for n, s in enumerate(steps):
        if n == 0 or s.scaled:
            m = "n/a" if s.metric is None else f"{s.metric:.1f}"
            lines.append(
                f"{s.at.isoformat()}  metric={m:>6}  {s.current:>3} -> {s.desired:<3} "
                f"{s.pool_decision.reason.value}: {s.pool_decision.explain()}"
            )
    return lines


def plot(
    steps: list[SimStep], out_png: str | Path, *, spec: PolicySpec | None = None, title: str | None = None
) -> None:
    """Draw the metric and the capacity (desired and serving) over time to a PNG; `spec` adds its lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    fig, ax_metric = plt.subplots(figsize=(11, 5), dpi=100)
    try:
        times = [float(mdates.date2num(s.at)) for s in steps]
        ax_metric.plot(
            times,
            [float("nan") if s.metric is None else s.metric for s in steps],
            color="tab:red",
            label="metric",
        )
        if steps:
            d = steps[0].policy_decision
            ax_metric.set_ylabel(d.metric_name or "metric")
        ax_metric.set_xlabel("time")
        if spec is not None:
            lines = {
                "threshold_up": spec.threshold_up,
                "threshold_down": spec.threshold_down,
                "threshold": spec.threshold,
                "target": spec.target,
            }
            for name, y in lines.items():
                if y is not None:
                    ax_metric.axhline(y, color="tab:red", linestyle=":", alpha=0.6, label=name)
        ax_cap = ax_metric.twinx()
        ax_cap.step(times, [s.desired for s in steps], where="post", color="tab:blue", label="desired")
        ax_cap.step(
            times,
            [s.serving for s in steps],
            where="post",
            color="tab:green",
            linestyle="--",
            label="serving",
        )
        ax_cap.set_ylabel("servers")
        ax_cap.set_ylim(bottom=0, top=max([s.desired for s in steps] + [s.serving for s in steps] + [1]) + 1)
        for s in steps:
            if s.scaled:
                ax_cap.axvline(float(mdates.date2num(s.at)), color="grey", alpha=0.2)
        handles = ax_metric.get_legend_handles_labels()[0] + ax_cap.get_legend_handles_labels()[0]
        ax_metric.legend(handles=handles, loc="upper left")
        ax_metric.xaxis_date()
        ax_metric.set_title(title or "poolctl simulate")
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(str(out_png), format="png")
    finally:
        plt.close(fig)
