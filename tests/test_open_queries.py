"""`query_open` tells "no run is open" from "no worker answers": the server's FAILED_PRECONDITION "no poller
seen for task queue recently" (a worker killed moments ago) is asked again, not read as a closed workflow
(`poolctl status` of a running pool said `active (no workflow)` and exited 0)."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.service import RPCError, RPCStatusCode

from poolctl.starter import open_queries
from poolctl.starter.open_queries import query_open

NO_POLLER = RPCError(
    "no poller seen for task queue recently, worker may be down", RPCStatusCode.FAILED_PRECONDITION, b""
)
CLOSED = RPCError("workflow execution already completed", RPCStatusCode.FAILED_PRECONDITION, b"")


class Handle:
    """A workflow handle whose query raises `errors` in turn, then answers."""

    def __init__(self, *errors: RPCError) -> None:
        self.errors = list(errors)
        self.asked = 0

    async def query(self, *args: Any, **kwargs: Any) -> str:
        self.asked += 1
        if self.errors:
            raise self.errors.pop(0)
        return "answer"


async def test_no_poller_is_asked_again_until_a_worker_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(open_queries, "NO_POLLER_RETRY_S", 0.0)
    handle = Handle(NO_POLLER, NO_POLLER)
    assert await query_open(handle, "status") == "answer"  # type: ignore[arg-type]
    assert handle.asked == 3


async def test_other_failed_preconditions_still_mean_no_open_run() -> None:
    handle = Handle(CLOSED)
    assert await query_open(handle, "status") is None  # type: ignore[arg-type]
    assert handle.asked == 1
