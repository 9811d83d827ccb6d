"""Provider faults injected on purpose (the `local` provider's fault options): which call fails, hangs or
boots slowly. Pure and deterministic: the same idempotency key, call number and elapsed time always give
the same fault, so a fault test reproduces.

Options (all default to "no fault"), read from a pool's `provider_options`:

- `fail_ratio` (0..1): the share of provision/terminate calls that raise a retryable provider error;
- `hang_ratio` (0..1) and `hang_s`: the share of calls that do their work and then hang `hang_s` seconds
  before answering (past the activity's timeout: "timed out, but the server was created");
- `fail_for_s`: every call fails during the first `fail_for_s` seconds after the pool's first call (a
  provider outage of that length, then recovery);
- `boot_delay_s`: each new server takes this long before it answers (a slow boot).
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Annotated

from pydantic import Field, Strict

from poolctl.domain.model import StrictModel

Ratio = Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)]
"""A share of calls, 0..1 (integers 0 and 1 are accepted)."""
FaultSeconds = Annotated[float, Strict(), Field(ge=0, le=86_400, allow_inf_nan=False)]
"""A fault's duration in seconds, 0..1 day."""


class Fault(StrEnum):
    """What happens to one provider call."""

    NONE = "none"
    FAIL = "fail"  # raise a retryable provider error, do nothing
    HANG = "hang"  # do the work, then hang `hang_s` before answering


class ProviderFaults(StrictModel):
    """The fault options of a provider (see the module docstring); all zero means no fault."""

    fail_ratio: Ratio = Field(default=0.0, description="share of calls that fail (retryable)")
    hang_ratio: Ratio = Field(
        default=0.0, description="share of calls that hang `hang_s` after doing their work"
    )
    hang_s: FaultSeconds = Field(default=0.0, description="how long a hanging call hangs")
    fail_for_s: FaultSeconds = Field(
        default=0.0, description="every call fails this long after the first call"
    )
    boot_delay_s: FaultSeconds = Field(default=0.0, description="a new server answers only after this long")

    @property
    def any(self) -> bool:
        return any((self.fail_ratio, self.hang_ratio and self.hang_s, self.fail_for_s, self.boot_delay_s))


FAULT_OPTION_NAMES = tuple(ProviderFaults.model_fields)


def draw(key: str, call: int, salt: str) -> float:
    """A uniform number in [0, 1) fixed by (key, call, salt): the deterministic dice of fault injection."""
    digest = hashlib.sha256(f"{key}\x00{call}\x00{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def fault_for(faults: ProviderFaults, *, key: str, call: int, elapsed_s: float) -> Fault:
    """The fault of call number `call` (1, 2, ...) made with idempotency key `key`, `elapsed_s` seconds
    after the pool's first call. The outage window wins, then a failure, then a hang."""
    if elapsed_s < faults.fail_for_s:
        return Fault.FAIL
    if faults.fail_ratio and draw(key, call, "fail") < faults.fail_ratio:
        return Fault.FAIL
    if faults.hang_ratio and faults.hang_s and draw(key, call, "hang") < faults.hang_ratio:
        return Fault.HANG
    return Fault.NONE
