"""Scaling policy specs: the policy types, their strategies, metric sources and safety rails.

Durations are numbers of seconds (`*_s`); `cooldown_minutes` is accepted as the original system wrote it.
"""

from __future__ import annotations

import calendar
import math
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from pydantic import Field, field_validator, model_validator

from poolctl.domain.bounds import (
    Adjustment,
    Fraction,
    HttpUrlText,
    MetricValue,
    PositiveSeconds,
    Seconds,
    ServerCount,
    ServerDelta,
    UrlPath,
)
from poolctl.domain.model import StrictModel
from poolctl.domain.names import NAME_PATTERN

PolicyType = Literal["cpu", "memory", "schedule", "custom"]
Strategy = Literal["threshold", "step", "target_tracking"]
AdjustmentType = Literal["change_in_capacity", "exact_capacity", "percent_change_in_capacity"]
OnMetricError = Literal["hold", "fallback", "ignore"]

DEFAULT_METRIC = {"cpu": "cpu_percent", "memory": "memory_percent"}
DEFAULT_COOLDOWN_S = 300.0
DEFAULT_STABILIZATION_WINDOW_S = 300.0
DEFAULT_EVALUATION_INTERVAL_S = 15.0
METRIC_NAME_PATTERN = r"^[a-zA-Z_:][a-zA-Z0-9_:]{0,199}$"


def validate_cron(expr: str) -> str:
    """A standard five-field cron expression (or an @alias such as @daily); seconds fields are refused."""
    expr = expr.strip()
    fields = expr.split()
    if not expr.startswith("@") and len(fields) != 5:
        raise ValueError(f"cron expression {expr!r} must have 5 fields (minute hour day month weekday)")
    if not croniter.is_valid(expr):
        raise ValueError(f"cron expression {expr!r} does not parse")
    check_cron_can_fire(expr)
    return expr


def check_cron_can_fire(expr: str) -> None:
    """Refuse an expression that never fires, such as `0 0 30 2 *` (30 February) or `0 0 31 4 *`.

    With the weekday field `*`, cron fires only on the listed days of the listed months; if no listed day
    exists in any listed month (29 February counts: leap years have it), the schedule can never fire.
    When both day fields are restricted, cron fires on either (it can always fire).
    """
    minutes, hours, days, months, weekdays = croniter(expr).expanded
    if weekdays == ["*"] and days != ["*"] and "l" not in days:
        month_numbers = range(1, 13) if months == ["*"] else [int(m) for m in months]
        # the longest each month can be (a leap year's February)
        if not any(int(d) <= calendar.monthrange(2024, m)[1] for m in month_numbers for d in days):
            names = ", ".join(calendar.month_name[m] for m in month_numbers)
            listed = ", ".join(str(d) for d in days)
            raise ValueError(
                f"cron expression {expr!r} can never fire: day {listed} does not exist in {names}"
            )
    try:
        croniter(expr).get_next(float)
    except CroniterBadDateError as e:  # any other combination croniter cannot place
        raise ValueError(f"cron expression {expr!r} can never fire ({e})") from e


# --- metric sources -------------------------------------------------------------------------------


class ScrapeSource(StrictModel):
    """Average (or other aggregate) of a gauge over the pool's servers' Prometheus `/metrics` endpoints."""

    kind: Literal["scrape"] = "scrape"
    metric: str | None = Field(
        default=None, pattern=METRIC_NAME_PATTERN, description="gauge name; defaults to the policy's metric"
    )
    aggregate: Literal["avg", "max", "min", "sum"] = "avg"
    path: UrlPath = Field(default="/metrics", description="path on each server, starting with '/'")
    timeout_s: Annotated[PositiveSeconds, Field(le=300)] = 5.0


class PrometheusSource(StrictModel):
    """An instant PromQL query through a Prometheus server's HTTP API; it must return one sample."""

    kind: Literal["prometheus"]
    url: HttpUrlText = Field(description="base URL of the Prometheus server, e.g. http://127.0.0.1:9090")
    query: str = Field(min_length=1, max_length=65_536, pattern=r"^[^\x00-\x08\x0b-\x1f\x7f]+$")
    timeout_s: Annotated[PositiveSeconds, Field(le=300)] = 5.0


class HttpJsonSource(StrictModel):
    """A number at a dotted path (`data.value`, `items.0.load`) in a JSON document fetched by GET."""

    kind: Literal["http_json"]
    url: HttpUrlText
    path: str = Field(min_length=1, max_length=1024, pattern=r"^[^\x00-\x1f\x7f]+$")
    timeout_s: Annotated[PositiveSeconds, Field(le=300)] = 5.0


class CloudWatchSource(StrictModel):
    """A CloudWatch metric of the pool's EC2 instances through `GetMetricData`: the `statistic` over
    `period_s` per instance (dimension `dimension` = the instance id), newest datapoint of each within
    `window_s`, then `aggregate` over the instances (average by default). For `provider: aws` pools."""

    kind: Literal["cloudwatch"]
    namespace: str = Field(
        default="AWS/EC2",
        min_length=1,
        max_length=255,
        pattern=r"^[^:].*$",
        description="CloudWatch namespace",
    )
    metric_name: str = Field(default="CPUUtilization", min_length=1, max_length=255)
    statistic: str = Field(
        default="Average",
        pattern=r"^(Average|Maximum|Minimum|Sum|SampleCount|p(\d{1,2}(\.\d{1,2})?|100))$",
        description="Average, Maximum, Minimum, Sum, SampleCount or a percentile such as p90",
    )
    period_s: int = Field(
        default=60, ge=1, le=86_400, description="1, 5, 10, 30 (high resolution) or a multiple of 60"
    )
    window_s: int | None = Field(
        default=None, ge=1, le=86_400, description="how far back to look for datapoints; default 3 periods"
    )
    dimension: str = Field(default="InstanceId", min_length=1, max_length=255)
    aggregate: Literal["avg", "max", "min", "sum"] = "avg"
    timeout_s: float = Field(default=10.0, gt=0, le=60, description="longest one read may take")

    @field_validator("period_s")
    @classmethod
    def _period(cls, v: int) -> int:
        if v not in (1, 5, 10, 30) and v % 60 != 0:
            raise ValueError(f"period_s {v} must be 1, 5, 10, 30 or a multiple of 60 (CloudWatch periods)")
        return v

    @model_validator(mode="after")
    def _window(self) -> CloudWatchSource:
        if self.window_s is not None and self.window_s < self.period_s:
            raise ValueError(f"window_s ({self.window_s}) is shorter than period_s ({self.period_s})")
        return self

    @property
    def effective_window_s(self) -> int:
        return self.window_s if self.window_s is not None else 3 * self.period_s


MetricSource = Annotated[
    ScrapeSource | PrometheusSource | HttpJsonSource | CloudWatchSource, Field(discriminator="kind")
]


# --- strategies' parts ----------------------------------------------------------------------------


class Step(StrictModel):
    """One step of a step-scaling policy, as AWS step scaling: bounds are relative to `threshold`.

    `None` bounds are infinite. Above the threshold the lower bound is inclusive and the upper exclusive;
    below it the lower bound is exclusive and the upper inclusive.
    """

    lower_bound: MetricValue | None = None
    upper_bound: MetricValue | None = None
    adjustment: Adjustment

    @model_validator(mode="after")
    def _check(self) -> Step:
        if (
            self.lower_bound is not None
            and self.upper_bound is not None
            and self.lower_bound >= self.upper_bound
        ):
            raise ValueError(
                f"lower_bound ({self.lower_bound}) must be less than upper_bound ({self.upper_bound})"
            )
        return self

    @property
    def lower(self) -> float:
        return -math.inf if self.lower_bound is None else self.lower_bound

    @property
    def upper(self) -> float:
        return math.inf if self.upper_bound is None else self.upper_bound


def check_step_table(steps: list[Step]) -> list[Step]:
    """The step table AWS `StepAdjustment` rules allow, sorted by bound; errors name `steps`.

    The steps' bounds (relative to `threshold`) must join without gaps or overlaps and reach the threshold
    (bound 0); a direction that has steps must end in an open-ended one (no upper bound above the threshold,
    no lower bound below it), and no step may be open at both ends. Every metric value in a direction that
    has steps then falls in exactly one step.
    """
    ordered = sorted(steps, key=lambda s: s.lower)

    def span(s: Step) -> str:
        lo = "-inf" if s.lower_bound is None else f"{s.lower_bound:g}"
        hi = "+inf" if s.upper_bound is None else f"{s.upper_bound:g}"
        return f"[{lo}, {hi}]"

    for s in ordered:
        if s.lower_bound is None and s.upper_bound is None:
            raise ValueError(
                f"steps: step {span(s)} has neither bound; give it the threshold (0) as one bound"
            )
    for a, b in zip(ordered, ordered[1:], strict=False):
        if a.upper > b.lower:
            raise ValueError(f"steps overlap: {span(a)} and {span(b)}")
        if a.upper < b.lower:
            raise ValueError(
                f"steps leave a gap from {a.upper:g} to {b.lower:g} between {span(a)} and {span(b)}: "
                "a metric there would fall in no step"
            )
    first, last = ordered[0], ordered[-1]
    if first.lower > 0 or last.upper < 0:
        reach = first.lower if first.lower > 0 else last.upper
        raise ValueError(
            f"steps leave a gap between the threshold (0) and {reach:g}: the first step must start at 0"
        )
    if last.upper > 0 and last.upper_bound is not None:
        raise ValueError(
            f"steps: the highest step {span(last)} needs no upper_bound (open-ended), "
            f"or a metric above threshold + {last.upper:g} falls in no step"
        )
    if first.lower < 0 and first.lower_bound is not None:
        raise ValueError(
            f"steps: the lowest step {span(first)} needs no lower_bound (open-ended), "
            f"or a metric below threshold {first.lower:g} falls in no step"
        )
    return ordered


class ScheduleSpec(StrictModel):
    """A window that opens at each `cron` fire (in `timezone`) and lasts `duration_s` or until `end_cron`."""

    cron: str
    timezone: str = "UTC"
    min_servers: ServerCount | None = None
    max_servers: ServerCount | None = None
    desired_servers: ServerCount | None = None
    duration_s: PositiveSeconds | None = None
    end_cron: str | None = None

    @field_validator("cron", "end_cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        return None if v is None else validate_cron(v)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ValueError(f"unknown IANA time zone {v!r}") from e
        return v

    @model_validator(mode="after")
    def _check(self) -> ScheduleSpec:
        if (self.duration_s is None) == (self.end_cron is None):
            raise ValueError("give exactly one of duration_s or end_cron")
        if self.min_servers is None and self.max_servers is None and self.desired_servers is None:
            raise ValueError("a schedule sets at least one of min_servers, max_servers, desired_servers")
        lo = self.min_servers
        hi = self.max_servers
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min_servers ({lo}) is greater than max_servers ({hi})")
        d = self.desired_servers
        if d is not None and ((lo is not None and d < lo) or (hi is not None and d > hi)):
            raise ValueError(f"desired_servers ({d}) is outside min_servers/max_servers ({lo}, {hi})")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


# --- rate limits per direction (Kubernetes HPA `behavior`) ----------------------------------------


class RatePolicy(StrictModel):
    """At most `value` servers (`type: servers`) or `value` percent of the count at the start of the
    period (`type: percent`) added or removed within any `period_s` (HPA `HPAScalingPolicy`)."""

    type: Literal["servers", "percent"]
    value: Annotated[Adjustment, Field(gt=0)]
    period_s: Annotated[PositiveSeconds, Field(le=1800, description="seconds; HPA allows up to 30 minutes")]

    @model_validator(mode="after")
    def _whole_servers(self) -> RatePolicy:
        if self.type == "servers" and self.value != int(self.value):
            raise ValueError(f"a servers rate policy takes a whole number of servers, got {self.value:g}")
        return self


class ScalingRules(StrictModel):
    """One direction's rules (HPA `HPAScalingRules`): a stabilization window and rate policies.

    `select_policy`: `max` takes the policy that allows the largest change, `min` the smallest, `disabled`
    forbids scaling in this direction. No policies: no rate limit.
    """

    stabilization_window_s: Annotated[Seconds, Field(le=3600)] | None = None
    select_policy: Literal["max", "min", "disabled"] = "max"
    policies: list[RatePolicy] = Field(default_factory=list)


class Behavior(StrictModel):
    """Rate limits and stabilization per direction, as HPA `behavior` (`scale_up`, `scale_down`)."""

    scale_up: ScalingRules | None = None
    scale_down: ScalingRules | None = None


def check_behavior_windows(behavior: Behavior | None, stabilization_window_s: float, given: bool) -> float:
    """The scale-in stabilization window: `behavior.scale_down.stabilization_window_s` is the same setting
    as `stabilization_window_s`; giving both with different values is refused."""
    down = behavior.scale_down if behavior is not None else None
    if down is None or down.stabilization_window_s is None:
        return stabilization_window_s
    if given and down.stabilization_window_s != stabilization_window_s:
        raise ValueError(
            "behavior.scale_down.stabilization_window_s and stabilization_window_s are the same setting: "
            "give one"
        )
    return down.stabilization_window_s


# --- the policy -----------------------------------------------------------------------------------

_THRESHOLD_FIELDS = ("threshold_up", "threshold_down")
_STEP_FIELDS = ("threshold", "steps", "adjustment_type", "min_adjustment_magnitude")
_TARGET_FIELDS = ("target",)


class PolicySpec(StrictModel):
    """A scaling policy on a pool. Metric types (cpu, memory, custom) use a `strategy`; `schedule` uses `schedule`.

    `strategy` may be left out: it is inferred from the fields given (`target` → target_tracking,
    `steps` → step, otherwise threshold).
    """

    name: str = Field(pattern=NAME_PATTERN)
    type: PolicyType = "cpu"
    is_active: bool = True

    strategy: Strategy | None = None
    metric: str | None = Field(
        default=None, pattern=METRIC_NAME_PATTERN, description="defaults to cpu_percent / memory_percent"
    )
    source: MetricSource | None = Field(
        default=None, description="defaults to a scrape of the pool's servers"
    )

    # threshold (the original system's)
    threshold_up: MetricValue | None = None
    threshold_down: MetricValue | None = None
    scale_up_by: ServerDelta = 1
    scale_down_by: ServerDelta = 1

    # step (AWS step scaling)
    threshold: MetricValue | None = Field(
        default=None, description="breach threshold the step bounds are relative to"
    )
    steps: list[Step] | None = Field(default=None, max_length=100)
    adjustment_type: AdjustmentType = "change_in_capacity"
    min_adjustment_magnitude: ServerDelta | None = None

    # target tracking (Kubernetes HPA)
    target: Annotated[MetricValue, Field(gt=0)] | None = None
    tolerance_up: Fraction = 0.1
    tolerance_down: Annotated[Fraction, Field(lt=1)] = 0.1

    schedule: ScheduleSpec | None = None

    min_servers: ServerCount | None = None
    max_servers: ServerCount | None = None
    evaluation_interval: Annotated[Seconds, Field(ge=1, le=86_400)] = Field(
        default=DEFAULT_EVALUATION_INTERVAL_S, description="seconds, 1 s to 1 day"
    )
    scale_out_cooldown_s: Annotated[Seconds, Field(le=86_400)] = DEFAULT_COOLDOWN_S
    scale_in_cooldown_s: Annotated[Seconds, Field(le=86_400)] = DEFAULT_COOLDOWN_S
    stabilization_window_s: Annotated[Seconds, Field(le=86_400)] = Field(
        default=DEFAULT_STABILIZATION_WINDOW_S
    )
    max_step: ServerDelta | None = Field(
        default=None, description="most servers added or removed per evaluation"
    )
    behavior: Behavior | None = Field(
        default=None, description="HPA-style rate limits and stabilization per direction"
    )
    activation_threshold: MetricValue = Field(
        default=0.0, description="from zero servers, a metric above this asks for at least one server (KEDA)"
    )
    instance_warmup_s: Seconds = Field(
        default=0.0, description="seconds after its creation before a new server's metrics count (AWS)"
    )
    dry_run: bool = False
    on_metric_error: OnMetricError = "hold"
    fallback_servers: ServerCount | None = None

    @model_validator(mode="before")
    @classmethod
    def _cooldown_minutes(cls, data: Any) -> Any:
        if isinstance(data, dict) and "cooldown_minutes" in data:
            data = dict(data)
            minutes = data.pop("cooldown_minutes")
            if "scale_out_cooldown_s" in data or "scale_in_cooldown_s" in data:
                raise ValueError(
                    "give cooldown_minutes or scale_out_cooldown_s/scale_in_cooldown_s, not both"
                )
            if (
                not isinstance(minutes, int | float)
                or isinstance(minutes, bool)
                or not 0 <= minutes <= 1440  # also refuses NaN
            ):
                raise ValueError(
                    f"cooldown_minutes must be a number of minutes from 0 to 1440, got {minutes!r}"
                )
            data["scale_out_cooldown_s"] = data["scale_in_cooldown_s"] = float(minutes) * 60.0
        return data

    @model_validator(mode="after")
    def _check(self) -> PolicySpec:
        if self.type == "schedule":
            self._check_schedule()
        else:
            self._check_metric_policy()
        if (
            self.min_servers is not None
            and self.max_servers is not None
            and self.min_servers > self.max_servers
        ):
            raise ValueError(
                f"min_servers ({self.min_servers}) is greater than max_servers ({self.max_servers})"
            )
        self.stabilization_window_s = check_behavior_windows(
            self.behavior, self.stabilization_window_s, "stabilization_window_s" in self.model_fields_set
        )
        if self.on_metric_error == "fallback" and self.fallback_servers is None:
            raise ValueError("on_metric_error 'fallback' needs fallback_servers")
        if self.on_metric_error != "fallback" and self.fallback_servers is not None:
            raise ValueError("fallback_servers is only used with on_metric_error: fallback")
        return self

    def _given(self, names: tuple[str, ...]) -> list[str]:
        """Fields among `names` set to something other than their default (so a dumped spec reloads)."""
        fields = type(self).model_fields
        return [n for n in names if getattr(self, n) != fields[n].default]

    def _check_schedule(self) -> None:
        if self.schedule is None:
            raise ValueError("a schedule policy needs `schedule` (cron, timezone, and servers to set)")
        extra = self._given(
            (
                "strategy",
                "metric",
                "source",
                "min_servers",
                "max_servers",
                "on_metric_error",
                "fallback_servers",
                "behavior",
                "activation_threshold",
                "instance_warmup_s",
            )
            + _THRESHOLD_FIELDS
            + _STEP_FIELDS
            + _TARGET_FIELDS
        )
        if extra:
            raise ValueError(
                f"a schedule policy does not take {', '.join(extra)} (use schedule.min_servers/max_servers)"
            )

    def _check_metric_policy(self) -> None:
        if self.schedule is not None:
            raise ValueError(f"`schedule` is only for type: schedule (this policy is type: {self.type})")
        if self.strategy is None:
            if self.target is not None:
                self.strategy = "target_tracking"
            elif self.steps is not None:
                self.strategy = "step"
            else:
                self.strategy = "threshold"
        wrong: dict[str, tuple[str, ...]] = {
            "threshold": _STEP_FIELDS + _TARGET_FIELDS,
            "step": _THRESHOLD_FIELDS + _TARGET_FIELDS,
            "target_tracking": _THRESHOLD_FIELDS + _STEP_FIELDS,
        }
        extra = self._given(wrong[self.strategy])
        if extra:
            raise ValueError(f"strategy {self.strategy} does not use {', '.join(extra)}")
        if self.strategy == "threshold":
            if self.threshold_up is None or self.threshold_down is None:
                raise ValueError("strategy threshold needs threshold_up and threshold_down")
            if not self.threshold_down < self.threshold_up:
                raise ValueError(
                    f"threshold_down ({self.threshold_down}) must be less than threshold_up ({self.threshold_up})"
                )
        elif self.strategy == "step":
            self._check_steps()
        elif self.target is None:
            raise ValueError("strategy target_tracking needs target")

        if self.metric is None:
            if self.type == "custom":
                if self.source is None:
                    raise ValueError(
                        "a custom policy needs a `source` (scrape, prometheus, http_json or cloudwatch)"
                    )
                self.metric = self.source.metric if isinstance(self.source, ScrapeSource) else "custom"
                if self.metric is None:
                    raise ValueError("a custom scrape source needs `metric` (the gauge name)")
            else:
                self.metric = DEFAULT_METRIC[self.type]
        if self.source is None:
            if self.type == "custom":
                raise ValueError(
                    "a custom policy needs a `source` (scrape, prometheus, http_json or cloudwatch)"
                )
            self.source = ScrapeSource(metric=self.metric)
        elif isinstance(self.source, ScrapeSource) and self.source.metric is None:
            self.source = self.source.model_copy(update={"metric": self.metric})

    def _check_steps(self) -> None:
        if self.threshold is None or not self.steps:
            raise ValueError("strategy step needs threshold and a non-empty list of steps")
        if self.min_adjustment_magnitude is not None and self.adjustment_type != "percent_change_in_capacity":
            raise ValueError("min_adjustment_magnitude is only used with percent_change_in_capacity")
        for i, s in enumerate(self.steps):
            if self.adjustment_type != "percent_change_in_capacity" and s.adjustment != int(s.adjustment):
                raise ValueError(f"steps[{i}].adjustment must be a whole number for {self.adjustment_type}")
            if self.adjustment_type == "exact_capacity" and s.adjustment < 0:
                raise ValueError(f"steps[{i}].adjustment is a capacity and cannot be negative")
        self.steps = check_step_table(self.steps)

    @property
    def is_metric_policy(self) -> bool:
        return self.type != "schedule"

    @property
    def scale_up_stabilization_window_s(self) -> float:
        """HPA `behavior.scaleUp.stabilizationWindowSeconds`: 0 (none) unless `behavior.scale_up` sets it."""
        up = self.behavior.scale_up if self.behavior is not None else None
        return up.stabilization_window_s or 0.0 if up is not None else 0.0
