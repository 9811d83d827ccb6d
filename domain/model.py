"""Base class for every poolctl spec and message model: strict (unknown fields are errors), immutable-ish."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Unknown fields are rejected so that a typo in a spec is an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Message(BaseModel):
    """Workflow and activity payloads: tolerant of extra fields so that old histories still decode."""

    model_config = ConfigDict(extra="ignore")
