"""NotificationWorkflow: deliver one event to every receiver that asked for it, each with its own retries
(exponential backoff), so a pool never waits on a webhook. Started by `notify()` as an abandoned child of
the workflow that saw the event; its id is the event's, so a replayed or repeated start is one delivery."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from poolctl.activities.webhooks import DeliveryInput, WebhookActivities
    from poolctl.domain.model import Message
    from poolctl.domain.notifications import WebhookEvent, WebhookSpec, receivers_for
    from poolctl.workflows.retry_policies import DELIVERY_RETRY


class NotificationInput(Message):
    event: WebhookEvent
    webhooks: list[WebhookSpec]


@workflow.defn
class NotificationWorkflow:
    @workflow.run
    async def run(self, inp: NotificationInput) -> dict[str, str]:
        """Returns url -> "delivered" | the last error, per receiver."""

        async def one(hook: WebhookSpec) -> tuple[str, str]:
            try:
                await workflow.execute_activity_method(
                    WebhookActivities.deliver_webhook,
                    DeliveryInput(webhook=hook, event=inp.event),
                    start_to_close_timeout=timedelta(seconds=hook.timeout_s + 5),
                    retry_policy=DELIVERY_RETRY,
                    summary=f"{inp.event.type.value} -> {hook.url}",
                )
            except ActivityError as e:
                return hook.url, str(e.cause or e)
            return hook.url, "delivered"

        results = await asyncio.gather(*(one(h) for h in receivers_for(inp.webhooks, inp.event.type)))
        return dict(results)


async def notify(webhooks: list[WebhookSpec], event: WebhookEvent) -> None:
    """From inside a workflow: hand `event` to a NotificationWorkflow when any receiver wants it; never
    waits for delivery and never fails the caller."""
    if not receivers_for(webhooks, event.type):
        return
    try:
        await workflow.start_child_workflow(
            NotificationWorkflow.run,
            NotificationInput(event=event, webhooks=webhooks),
            id=f"notify/{event.id}",
            parent_close_policy=ParentClosePolicy.ABANDON,
            static_summary=f"notify {event.type.value}: {event.summary[:60]}",
        )
    except WorkflowAlreadyStartedError:
        pass  # the same event, handed over already
