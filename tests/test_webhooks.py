"""Webhook notifications: a real receiver gets each event signed (HMAC-SHA256), a receiver that fails
twice still gets it (Temporal retries with backoff), every attempt is recorded; specs validate; a pool
sends each event type (scaling action, health transition, auto-heal, pool error) to the receivers its
spec names."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
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
from tests.helpers import apply_yaml, eventually, pool_view

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


def _pools_with_webhooks(url: str) -> str:
    """`web`: two real local servers with a health check and auto-healing (one unhealthy of two is replaced;
    more than half would stop healing); `broken`: a FAKE provider that
    fails every provision, so its scaling fails and the pool enters `error`."""
    return f"""
webhooks:
  - url: {url}
    secret: {SECRET}
pools:
  - name: web
    min_servers: 2
    max_servers: 3
    desired_servers: 2
    auto_healing: true
    health_check: {{type: http, path: /health, interval: 1, timeout: 0.5, jitter: 0,
                   healthy_threshold: 1, unhealthy_threshold: 2}}
  - name: broken
    provider: fake
    provider_options: {{fail_provision: true}}
    min_servers: 0
    max_servers: 1
    desired_servers: 1
"""


def _events(r: Receiver) -> list[dict]:
    out = []
    for headers, body in r.received:
        assert verify(SECRET, body, headers[SIGNATURE_HEADER]), "bad signature"
        ev = WebhookEvent.model_validate_json(body)
        assert headers[EVENT_HEADER] == ev.type.value and headers[DELIVERY_HEADER] == ev.id
        out.append(ev.model_dump(mode="json"))
    return out


@pytest.mark.temporal
async def test_a_local_pool_and_a_fake_provider_pool_send_every_event_type_to_a_flaky_receiver(
    client: Client, settings: Settings, worker, flaky_receiver: Receiver
) -> None:
    await apply_yaml(client, settings, _pools_with_webhooks(flaky_receiver.url))

    async def events() -> list[dict]:
        return _events(flaky_receiver)

    def has(evs: list[dict], kind: str, pool: str, **data: object) -> bool:
        return any(
            e["type"] == kind and e["pool"] == pool and all(e["data"].get(k) == v for k, v in data.items())
            for e in evs
        )

    await eventually(
        events,
        lambda evs: (
            has(evs, "scaling_action", "web", direction="up", status="succeeded")
            and has(evs, "health_transition", "web", state="healthy")
            and has(evs, "scaling_action", "broken", status="failed")
            and has(evs, "pool_error", "broken")
        ),
        timeout=90,
        interval=0.3,
    )
    view = await pool_view(client, settings, "web")
    assert view is not None and view.servers
    victim = view.servers[0]
    async with httpx.AsyncClient() as http:
        r = await http.post(f"http://{victim.host}:{victim.port}/admin/health", json={"healthy": False})
        r.raise_for_status()
    evs = await eventually(
        events,
        lambda evs: (
            has(evs, "health_transition", "web", server_id=victim.server_id, state="unhealthy")
            and has(
                evs, "auto_heal", "web", action="replaced", servers=[victim.server_id], status="succeeded"
            )
            and has(evs, "scaling_action", "web", direction="replace", status="succeeded")
        ),
        timeout=90,
        interval=0.3,
    )
    assert {e["type"] for e in evs} == {t.value for t in EventType}
    assert len({e["id"] for e in evs}) == len(evs), "an event was delivered twice"
    assert flaky_receiver.attempts >= len(evs) + 2  # the first two attempts failed and were retried


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
