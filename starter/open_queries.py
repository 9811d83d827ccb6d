"""Queries that only an open (running) workflow answers.

Temporal keeps answering queries on a closed workflow until its history's retention ends (24 h on the dev
server): a deleted pool would still report "deleting", a removed policy its last state. Every query the CLI
sends goes through `query_open`, which asks with `QueryRejectCondition.NOT_OPEN` and returns None for a
workflow that is closed or unknown.

A query waits for a worker to answer it; with no worker polling, the server gives up after about 30 s
("Timeout expired"), or, once it has noticed that the task queue lost its pollers (a worker killed), answers
FAILED_PRECONDITION "no poller seen for task queue recently, worker may be down" (the status it also uses
for a closed workflow: that one said "no workflow" to `poolctl status` of a running pool). `query_open`
asks again until it gets an answer: how long the command waits is the caller's deadline
(`starter.waiting.for_worker`, `--timeout`), not the server's."""

from __future__ import annotations

import asyncio
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
            if isinstance(e, RPCError) and _no_poller(e):
                await asyncio.sleep(
                    NO_POLLER_RETRY_S
                )  # answered at once while no worker polls: not a busy loop
            elif not (isinstance(e, RPCError) and e.status in NO_WORKER_ANSWERED):
                return None


def _no_poller(e: RPCError) -> bool:
    """Is this the server's "no worker polls the task queue" answer (the workflow may well be open)?"""
    return e.status == RPCStatusCode.FAILED_PRECONDITION and NO_POLLER_MESSAGE in e.message


# what the server answers for a workflow that is closed or unknown
NOT_OPEN = (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION)
# what the server's matching service says (FAILED_PRECONDITION) when the task queue has had no poller lately
NO_POLLER_MESSAGE = "no poller seen for task queue recently"
NO_POLLER_RETRY_S = 1.0
# what the server answers when no worker took the query before its own deadline
NO_WORKER_ANSWERED = (RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED)
