"""Drift reconcile: what a pool does about servers its provider and its own membership disagree on.

`orphans` are servers the provider runs under the pool's tag that the pool does not count (a provision
that timed out but created its server, a process started by hand with the pool's tag); `gone` are members
the provider no longer runs (a process killed by hand, an instance terminated in the cloud console). A
gone member is forgotten (and replaced by the normal reconcile); an orphan is adopted or terminated by
the pool's `orphan_policy`. An orphan still booting (`pending`) is adopted only once it runs.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from poolctl.domain.model import Message


class OrphanPolicy(StrEnum):
    """What a pool does with a server the provider has under its tag but the pool does not count."""

    ADOPT = "adopt"  # make it a member (the normal reconcile then scales in if the pool is too big)
    TERMINATE = "terminate"  # terminate it through the provider


class DriftPlan(Message):
    """Server ids to adopt, terminate and forget (each sorted); `waiting`: orphans still booting."""

    adopt: list[str] = Field(default_factory=list)
    terminate: list[str] = Field(default_factory=list)
    forget: list[str] = Field(default_factory=list)
    waiting: list[str] = Field(default_factory=list)

    @property
    def acts(self) -> bool:
        return bool(self.adopt or self.terminate or self.forget)


def plan_drift(orphans: dict[str, bool], gone: list[str], policy: OrphanPolicy) -> DriftPlan:
    """The plan for `orphans` (server id -> running yet?) and `gone` member ids under `policy`."""
    if policy is OrphanPolicy.TERMINATE:
        return DriftPlan(terminate=sorted(orphans), forget=sorted(gone))
    return DriftPlan(
        adopt=sorted(sid for sid, running in orphans.items() if running),
        waiting=sorted(sid for sid, running in orphans.items() if not running),
        forget=sorted(gone),
    )


def drift_due(checked_at_s: float | None, now_s: float, interval_s: float) -> bool:
    """Is a drift check due (`interval_s` <= 0 turns the check off)? Times in seconds on one clock."""
    if interval_s <= 0:
        return False
    return checked_at_s is None or now_s - checked_at_s >= interval_s
