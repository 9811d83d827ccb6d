"""simulate: the same decision code over a recorded trace, on a modelled pool, and its plot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from poolctl.domain.decision import ReasonCode
from poolctl.domain.policy_spec import PolicySpec
from poolctl.simulate import format_timeline, load_trace_csv, plot, simulate

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def _trace_csv(path: Path) -> Path:
    lines = ["timestamp,value"]
    for i in range(0, 1800, 15):  # 30 minutes: quiet, a load step, quiet again
        value = 90.0 if 300 <= i < 900 else 20.0
        at = T0 + timedelta(seconds=i)
        lines.append(f"{at.isoformat() if i % 2 else int(at.timestamp())},{value}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_simulate_scales_out_then_in_and_plots(tmp_path: Path) -> None:
    trace = load_trace_csv(_trace_csv(tmp_path / "trace.csv"))
    assert trace[0] == (T0, 20.0) and len(trace) == 120
    spec = PolicySpec.model_validate(
        {
            "name": "cpu",
            "target": 50,
            "scale_out_cooldown_s": 60,
            "scale_in_cooldown_s": 60,
            "stabilization_window_s": 120,
        }
    )
    steps = simulate(spec, trace, start=2, boot_delay_s=30, pool_min=2, pool_max=8, load_model=True)
    assert len(steps) == 120
    assert all(2 <= s.desired <= 8 for s in steps)
    peak = max(s.desired for s in steps)
    assert peak > 2
    first_out = next(s for s in steps if s.desired > s.current)
    assert first_out.at == T0 + timedelta(seconds=300)  # reacts at the first evaluation over target
    assert first_out.pool_decision.reason is ReasonCode.TARGET_TRACKING
    # booting servers are not serving yet
    assert steps[steps.index(first_out) + 1].serving == 2
    # no scale-in until the stabilization window has passed since the last high recommendation
    ins = [s for s in steps if s.desired < s.current]
    assert ins and ins[0].at >= T0 + timedelta(seconds=900 + 120 - 15)
    assert steps[-1].desired < peak
    assert format_timeline(steps)
    out = tmp_path / "plot.png"
    plot(steps, out, spec=spec)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulate_observed_model_matches_step_by_step_evaluation(tmp_path: Path) -> None:
    trace = load_trace_csv(_trace_csv(tmp_path / "trace.csv"))
    spec = PolicySpec.model_validate(
        {"name": "thr", "threshold_up": 80, "threshold_down": 30, "cooldown_minutes": 1, "dry_run": True}
    )
    steps = simulate(spec, trace, start=3, boot_delay_s=0, pool_min=2, pool_max=5)
    assert [s.metric for s in steps] == [v for _, v in trace]  # observed values, untouched
    assert max(s.desired for s in steps) == 5
    assert (
        any(s.pool_decision.reason is ReasonCode.AT_MAX_SERVERS for s in steps)
        or max(s.desired for s in steps) == 5
    )
    assert min(s.desired for s in steps) == 2


def test_simulate_booting_servers_stop_at_five_issue_trace(tmp_path: Path) -> None:
    """`poolctl simulate --start 4 --boot-delay 300 --load-model` on a flat 62.5 % trace, target 50 and no
    scale-out cooldown: one server is added (4 -> 5), and the pool stays there while it boots and after."""
    import json

    from typer.testing import CliRunner

    from poolctl.starter.cli import app

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        """
pools:
  - name: web
    provider: fake
    min_servers: 1
    max_servers: 20
    desired_servers: 4
    policies:
      - {name: cpu, type: cpu, target: 50, scale_out_cooldown_s: 0, evaluation_interval: 15}
"""
    )
    trace = tmp_path / "flat.csv"
    trace.write_text("".join(f"{1_700_000_000 + i * 15},62.5\n" for i in range(41)))  # 10 minutes
    result = CliRunner().invoke(
        app,
        ["simulate", "-f", str(spec), "--policy", "cpu", "--trace", str(trace), "--start", "4"]
        + ["--boot-delay", "300", "--load-model", "--json"],
    )
    assert result.exit_code == 0, result.output
    steps = json.loads(result.output)
    assert {s["desired"] for s in steps} == {5}
    assert steps[1]["ready"] == 4 and steps[1]["policy"]["reason"] == "WithinTolerance"
    assert steps[-1]["ready"] == 5 and steps[-1]["metric"] == 50.0  # booted: the load spreads over 5


def test_simulate_instance_warmup_and_activation_from_zero() -> None:
    spec = PolicySpec.model_validate(
        {
            "name": "q",
            "type": "custom",
            "source": {"kind": "http_json", "url": "http://127.0.0.1:1/q", "path": "v"},
            "target": 10,
            "instance_warmup_s": 60,
            "scale_out_cooldown_s": 0,
            "evaluation_interval": 15,
        }
    )
    trace = [(T0 + timedelta(seconds=15 * i), v) for i, v in enumerate([0, 0, 5, 30, 30, 30, 30, 30, 30])]
    steps = simulate(spec, trace, start=0, boot_delay_s=0, pool_min=0, pool_max=10)
    assert [s.desired for s in steps] == [0, 0, 1, 1, 1, 1, 3, 3, 3]  # created at 30 s, ready at 90 s
    reasons = [s.policy_decision.reason for s in steps]
    assert reasons[:3] == [
        ReasonCode.BELOW_ACTIVATION_THRESHOLD,
        ReasonCode.BELOW_ACTIVATION_THRESHOLD,
        ReasonCode.SCALE_FROM_ZERO,
    ]
    assert reasons[3:6] == [ReasonCode.SERVERS_NOT_READY] * 3  # warming up for 60 s
    assert steps[6].ready == 1 and reasons[6] is ReasonCode.TARGET_TRACKING


def test_simulate_names_a_trace_it_cannot_read_in_one_line(tmp_path: Path) -> None:
    """A missing trace file is said as a missing spec file is: the path, `cannot read`, the reason; exit 2."""
    from typer.testing import CliRunner

    from poolctl.starter.cli import app

    missing = tmp_path / "nope.csv"
    result = CliRunner().invoke(
        app, ["simulate", "-f", "examples/demo.yaml", "--policy", "cpu-target", "--trace", str(missing)]
    )
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {missing}: cannot read: No such file or directory"
