"""The declared options of each provider driver (`provider_options` in a pool spec), checked at validation.

A typo in an option is refused when the spec is validated, not at the first provisioning. The drivers in
activities/providers/ read exactly these keys (see their module docstrings).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, Strict, ValidationError

from poolctl.domain.bounds import MAX_SERVERS, Port, ServerCount
from poolctl.domain.model import StrictModel

_StartupSeconds = Annotated[float, Strict(), Field(gt=0, le=3600, allow_inf_nan=False)]


class LocalProviderOptions(StrictModel):
    """Options of the `local` provider (real processes on 127.0.0.1)."""

    quota: ServerCount | None = Field(default=None, description="most live servers of the pool")
    command: list[Annotated[str, Strict(), Field(min_length=1, max_length=4096)]] | None = Field(
        default=None, min_length=1, max_length=256, description="argv prefix replacing the local server"
    )
    startup_timeout_s: _StartupSeconds | None = Field(
        default=None, description="wait for the server to answer"
    )


class FakeProviderOptions(StrictModel):
    """Options of the `fake` provider (in memory, for failure-handling tests)."""

    fail_provision: Annotated[bool, Strict()] = False
    fail_terminate: Annotated[bool, Strict()] = False
    fail_times: ServerCount = 0
    quota: ServerCount | None = None
    delay_s: Annotated[float, Strict(), Field(ge=0, le=3600, allow_inf_nan=False)] = 0.0
    ports: list[Port] | None = Field(default=None, max_length=MAX_SERVERS, description="ports servers get")
    api_token: str | None = Field(default=None, max_length=4096, description="a stand-in cloud credential")


PROVIDER_OPTIONS: dict[str, type[StrictModel]] = {"local": LocalProviderOptions, "fake": FakeProviderOptions}


def provider_option_problems(provider: str, options: dict[str, Any]) -> list[tuple[str, str]]:
    """(option path, message) for each option `provider` does not declare or whose value is wrong."""
    model = PROVIDER_OPTIONS.get(provider)
    if model is None:
        return []
    try:
        model.model_validate(options)
    except ValidationError as e:
        known = ", ".join(sorted(model.model_fields))
        problems = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append((loc, f"unknown option of the {provider} provider (known: {known})"))
            else:
                problems.append((loc, str(err["msg"])))
        return problems
    return []
