"""Read a running long-lived activity's last heartbeat (a probe loop's counters, a policy loop's
evaluations) from its workflow's description: live figures without the loop writing each step anywhere."""

from __future__ import annotations

from typing import Any

from temporalio.client import Client
from temporalio.service import RPCError

from poolctl.temporal_client import clear_frames


async def pending_heartbeat(client: Client, workflow_id: str, activity_type: str) -> dict[str, Any] | None:
    """The first heartbeat detail (as JSON) of workflow `workflow_id`'s pending `activity_type` activity;
    None when the workflow is not found, no such activity is pending, or it has not heartbeated yet."""
    try:
        desc = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as e:
        clear_frames(e)  # handled: its frames must not keep the client alive (`starter.open_queries`)
        return None
    for pending in desc.raw_description.pending_activities:
        if pending.activity_type.name != activity_type or not pending.heartbeat_details.payloads:
            continue
        [raw] = await client.data_converter.decode(pending.heartbeat_details.payloads[:1], [dict])
        return raw if isinstance(raw, dict) else None
    return None
