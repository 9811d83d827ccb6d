"""Queries that only an open (running) workflow answers.

Temporal keeps answering queries on a closed workflow until its history's retention ends (24 h on the dev
server): a deleted pool would still report "deleting", a removed policy its last state. Every query the CLI
sends goes through `query_open`, which asks with `QueryRejectCondition.NOT_OPEN` and returns None for a
workflow that is closed or unknown.

A query waits for a worker to answer it; with no worker polling, the server gives up after about 30 s
("Timeout expired"). `query_open` asks again until it gets an answer: how long the command waits is the
caller's deadline (`starter.waiting.for_worker`, `--timeout`), not the server's."""

from __future__ import annotations

from typing import Any

from temporalio.client import WorkflowHandle, WorkflowQueryRejectedError
from temporalio.common import QueryRejectCondition
from temporalio.service import RPCError, RPCStatusCode

from poolctl.temporal_client import clear_frames


async def query_open(handle: WorkflowHandle[Any, Any], query: Any, *args: Any) -> Any:
    """The answer of `query` (a `@workflow.query` method reference) on the workflow's open run, or None
    when no run is open (closed, never started, or removed by retention). Asks again while no worker
    answers (cancel the call to stop); other RPC errors (`temporalio.service.RPCError`) propagate."""
    while True:
        try:
            return await handle.query(query, *args, reject_condition=QueryRejectCondition.NOT_OPEN)
        except (WorkflowQueryRejectedError, RPCError) as e:
            if isinstance(e, RPCError) and e.status not in (*NOT_OPEN, *NO_WORKER_ANSWERED):
                raise
            # Handled here, but the SDK's bridge future still holds it, in a cycle the garbage collector
            # does not break on 3.11: its frames would keep the client (hence the command's Temporal
            # runtime) alive past the loop (`poolctl.temporal_client.command_runtime`).
            clear_frames(e)
            if not (isinstance(e, RPCError) and e.status in NO_WORKER_ANSWERED):
                return None


# what the server answers for a workflow that is closed or unknown
NOT_OPEN = (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION)
# what the server answers when no worker took the query before its own deadline
NO_WORKER_ANSWERED = (RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED)
