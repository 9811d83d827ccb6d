"""Webhook notifications: a real receiver gets each event signed (HMAC-SHA256), a receiver that fails
twice still gets it (Temporal retries with backoff), every attempt is recorded; specs validate."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiohttp import web
from pydantic import ValidationError
from temporalio.client import Client

from poolctl.domain.notifications import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    EventType,
    WebhookEvent,
    WebhookSpec,
    verify,
)
from poolctl.domain.pool_spec import SpecDocument
from poolctl.settings import Settings
from poolctl.store.db import session_scope
from poolctl.store.webhook_deliveries import list_deliveries
from poolctl.workflows.notify import NotificationInput, NotificationWorkflow
from tests.helpers import eventually

SECRET = "a-test-secret-of-some-length"


class Receiver:
    """An HTTP webhook receiver that fails the first `fail_first` deliveries with 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.attempts = 0
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.port = 0
        self.runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.read()
        if self.attempts <= self.fail_first:
            return web.Response(status=500, text="not now")
        self.received.append((dict(request.headers), body))
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


@pytest.fixture
async def flaky_receiver() -> AsyncIterator[Receiver]:
    r = Receiver(fail_first=2)
    await r.start()
    yield r
    assert r.runner is not None
    await r.runner.cleanup()


def event(kind: EventType, team: str) -> WebhookEvent:
    return WebhookEvent(
        id=f"{team}/web/{kind.value}/{uuid.uuid4().hex[:8]}",
        type=kind,
        team=team,
        pool="web",
        at=datetime.now(UTC),
        summary=f"test {kind.value}",
        data={"n": 1},
    )


@pytest.mark.temporal
async def test_a_receiver_that_fails_twice_still_gets_every_event_type_signed(
    client: Client, settings: Settings, worker, flaky_receiver: Receiver
) -> None:
    hook = WebhookSpec(url=flaky_receiver.url, secret=SECRET)
    events = [event(kind, settings.team) for kind in EventType]
    for ev in events:
        await client.start_workflow(
            NotificationWorkflow.run,
            NotificationInput(event=ev, webhooks=[hook]),
            id=f"notify/{ev.id}",
            task_queue=settings.task_queue,
        )
    got = await eventually(
        lambda: _received(flaky_receiver), lambda r: len(r) == len(events), timeout=90, interval=0.3
    )
    by_id = {}
    for headers, body in got:
        assert verify(SECRET, body, headers[SIGNATURE_HEADER]), "bad signature"
        by_id[headers[DELIVERY_HEADER]] = (headers[EVENT_HEADER], body)
    assert {e.id: e.type.value for e in events} == {k: v[0] for k, v in by_id.items()}
    for ev in events:
        assert by_id[ev.id][1] == ev.body()
    with session_scope(settings.resolved_database_url) as s:
        rows = list_deliveries(s, pool="web")
        outcomes = sorted((r.event_id, r.attempt, r.outcome) for r in rows)
    failed = [o for o in outcomes if o[2] == "failed"]
    delivered = {o[0] for o in outcomes if o[2] == "delivered"}
    assert len(failed) == 2 and delivered == {e.id for e in events}


async def _received(r: Receiver) -> list[tuple[dict[str, str], bytes]]:
    return list(r.received)


def test_webhook_specs_validate_and_team_receivers_join_each_pool() -> None:
    with pytest.raises(ValidationError, match="http"):
        WebhookSpec(url="file:///etc/passwd", secret=SECRET)
    with pytest.raises(ValidationError, match="at least 16"):
        WebhookSpec(url="http://127.0.0.1/hook", secret="short")
    doc = SpecDocument.model_validate(
        {
            "team": "t",
            "webhooks": [{"url": "http://127.0.0.1:9/team", "secret": SECRET}],
            "pools": [
                {"name": "a"},
                {"name": "b", "webhooks": [{"url": "http://127.0.0.1:9/b", "secret": SECRET,
                                           "events": ["pool_error"]}]},
            ],
        }
    )  # fmt: skip
    urls = {p.name: [w.url for w in p.webhooks] for p in doc.pools}
    assert urls == {
        "a": ["http://127.0.0.1:9/team"],
        "b": ["http://127.0.0.1:9/b", "http://127.0.0.1:9/team"],
    }
    assert doc.pools[1].webhooks[0].events == [EventType.POOL_ERROR]
