"""v1/v2 event pagination and object fetches against a scripted local server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ingestor.config import Secret, StripeConfig
from ingestor.errors import MalformedResponse, StripeNotFound
from ingestor.events import ms_to_rfc3339
from ingestor.pages import Page, fetch_object, v1_pages, v2_pages
from ingestor.ratelimit import RateBudget
from ingestor.stripe_api import StripeClient
from tests.unit.stripe_stub import Reply, Seen, StripeStub, error

T0 = 1_760_000_000


def v1_event(i: int) -> dict[str, Any]:
    return {
        "id": f"evt_{i:04d}",
        "object": "event",
        "type": "charge.succeeded",
        "created": T0 + i,
        "livemode": False,
        "api_version": "2024-06-20",
        "data": {"object": {"id": f"ch_{i}", "object": "charge"}},
    }


def v2_event(i: int) -> dict[str, Any]:
    return {
        "id": f"evt_test_{i:04d}",
        "object": "v2.core.event",
        "type": "v1.billing.meter.error_report_triggered",
        "created": ms_to_rfc3339(T0 * 1000 + i),
        "livemode": False,
        "related_object": {
            "id": f"mtr_{i}",
            "type": "billing.meter",
            "url": f"/v1/billing/meters/mtr_{i}",
        },
    }


class V1Events:
    """Serves `n` events newest first, honouring `limit` and `starting_after` like Stripe."""

    def __init__(self, n: int) -> None:
        self.events = [v1_event(i) for i in reversed(range(n))]

    def __call__(self, seen: Seen) -> Reply:
        q = dict(seen.query)
        limit = int(q.get("limit", "10"))
        start = 0
        if "starting_after" in q:
            start = 1 + next(i for i, e in enumerate(self.events) if e["id"] == q["starting_after"])
        chunk = self.events[start : start + limit]
        more = start + limit < len(self.events)
        return Reply(json={"object": "list", "url": "/v1/events", "data": chunk, "has_more": more})


@pytest.fixture
async def stub() -> AsyncIterator[StripeStub]:
    async with StripeStub() as s:
        yield s


async def no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


@pytest.fixture
async def client(stub: StripeStub) -> AsyncIterator[StripeClient]:
    cfg = StripeConfig(
        api_key=Secret("sk_test_pages"),
        api_base=stub.base,
        max_retries=3,
        backoff_base=0.001,
        backoff_max=0.01,
    )
    async with StripeClient(cfg, budget=RateBudget(1000.0), sleep=no_sleep) as c:
        yield c


async def collect(pages: AsyncIterator[Page]) -> list[Page]:
    return [p async for p in pages]


async def test_v1_walks_every_page_newest_to_oldest_with_starting_after(
    stub: StripeStub, client: StripeClient
) -> None:
    stub.fallback = V1Events(250)
    pages = await collect(
        v1_pages(client, account="acct_1", created_gte=T0, created_lt=T0 + 1000, limit=100)
    )
    assert [len(p.events) for p in pages] == [100, 100, 50]
    assert [p.has_more for p in pages] == [True, True, False]
    ids = [e.id for p in pages for e in p.events]
    assert ids == [f"evt_{i:04d}" for i in reversed(range(250))]
    assert [p.request_id for p in pages] == ["req_1", "req_2", "req_3"]
    assert [p.cursor for p in pages] == ["evt_0150", "evt_0050", None]
    first, second, third = (dict(r.query) for r in stub.requests)
    assert first == {"limit": "100", "created[gte]": str(T0), "created[lt]": str(T0 + 1000)}
    assert second == {**first, "starting_after": "evt_0150"}
    assert third == {**first, "starting_after": "evt_0050"}
    assert all(r.headers["Stripe-Account"] == "acct_1" for r in stub.requests)
    event = pages[0].events[0]
    assert (event.api, event.account, event.object_id) == ("v1", "acct_1", "ch_249")
    assert event.created_ms == (T0 + 249) * 1000


async def test_v1_sends_one_type_as_type_and_several_as_types_array(
    stub: StripeStub, client: StripeClient
) -> None:
    stub.fallback = V1Events(3)
    await collect(v1_pages(client, account=None, types=["charge.succeeded"]))
    await collect(v1_pages(client, account=None, types=["a.b", "c.d"]))
    assert ("type", "charge.succeeded") in stub.requests[0].query
    assert "Stripe-Account" not in stub.requests[0].headers
    many = stub.requests[1].query
    assert [v for k, v in many if k == "types[]"] == ["a.b", "c.d"]
    assert all(k != "type" for k, _ in many)


async def test_v1_resumes_from_a_given_starting_after(
    stub: StripeStub, client: StripeClient
) -> None:
    stub.fallback = V1Events(30)
    pages = await collect(v1_pages(client, account=None, limit=10, starting_after="evt_0010"))
    assert [e.id for p in pages for e in p.events] == [f"evt_{i:04d}" for i in reversed(range(10))]
    assert ("starting_after", "evt_0010") in stub.requests[0].query


@pytest.mark.parametrize(
    "body",
    [
        {"object": "list", "has_more": False},
        {"object": "list", "data": {"0": 1}, "has_more": False},
        {"object": "list", "data": [{"type": "x", "created": 1, "data": {"object": {}}}]},
        {"object": "list", "data": [{"id": "evt_1", "created": 1, "data": {"object": {}}}]},
        {"object": "list", "data": [{"id": "evt_1", "type": "x", "data": {"object": {}}}]},
        {"object": "list", "data": [], "has_more": True},
        {"object": "list", "data": []},
    ],
    ids=["no-data", "data-not-list", "no-id", "no-type", "no-created", "stuck", "no-has-more"],
)
async def test_v1_a_garbage_page_is_retried_like_a_truncated_body(
    stub: StripeStub, client: StripeClient, body: dict[str, Any]
) -> None:
    stub.push(Reply(json=body))
    stub.fallback = V1Events(2)
    pages = await collect(v1_pages(client, account=None))
    assert [e.id for p in pages for e in p.events] == ["evt_0001", "evt_0000"]
    assert len(stub.requests) == 2


async def test_v1_a_page_that_stays_garbage_raises_malformed_after_retries(
    stub: StripeStub, client: StripeClient
) -> None:
    stub.fallback = Reply(json={"object": "list", "data": [{"id": "evt_1"}], "has_more": False})
    with pytest.raises(MalformedResponse) as info:
        await collect(v1_pages(client, account=None))
    assert info.value.retriable
    assert info.value.request_id == "req_4"
    assert len(stub.requests) == 4  # 1 + max_retries


async def test_v2_follows_next_page_url_until_null(stub: StripeStub, client: StripeClient) -> None:
    pages_out = [
        Reply(
            json={"data": [v2_event(5), v2_event(4)], "next_page_url": "/v2/core/events?page=p2"}
        ),
        Reply(
            json={"data": [v2_event(3), v2_event(2)], "next_page_url": "/v2/core/events?page=p3"}
        ),
        Reply(json={"data": [v2_event(1)], "next_page_url": None, "previous_page_url": None}),
    ]
    stub.push(*pages_out)
    pages = await collect(
        v2_pages(
            client,
            account="acct_2",
            created_gte_ms=T0 * 1000,
            created_lt_ms=T0 * 1000 + 60_000,
            types=["a.b", "c.d"],
            limit=2,
        )
    )
    assert [e.id for p in pages for e in p.events] == [f"evt_test_{i:04d}" for i in (5, 4, 3, 2, 1)]
    assert [p.has_more for p in pages] == [True, True, False]
    assert [p.cursor for p in pages] == ["/v2/core/events?page=p2", "/v2/core/events?page=p3", None]
    first, second, third = stub.requests
    assert first.path == "/v2/core/events"
    assert first.query == [
        ("limit", "2"),
        ("created[gte]", ms_to_rfc3339(T0 * 1000)),
        ("created[lt]", ms_to_rfc3339(T0 * 1000 + 60_000)),
        ("types", "a.b"),
        ("types", "c.d"),
    ]
    # Later pages: exactly the URL Stripe handed back, no filters added twice.
    assert second.query == [("page", "p2")]
    assert third.query == [("page", "p3")]
    assert all(r.headers["Stripe-Context"] == "acct_2" for r in stub.requests)
    assert all("Stripe-Account" not in r.headers for r in stub.requests)
    event = pages[0].events[0]
    assert event.api == "v2"
    assert event.account == "acct_2"
    assert event.api_version == "2026-10-28.endive"
    assert event.object_id == "mtr_5"
    assert event.related_url == "/v1/billing/meters/mtr_5"
    assert event.created_ms == T0 * 1000 + 5


async def test_v2_garbage_page_is_retried_and_a_self_loop_is_refused(
    stub: StripeStub, client: StripeClient
) -> None:
    loop = "/v2/core/events?page=same"
    stub.push(
        Reply(json={"data": [{"id": "evt_x", "type": "t"}], "next_page_url": None}),
        Reply(json={"data": [v2_event(1)], "next_page_url": loop}),
        Reply(json={"data": [], "next_page_url": loop}),
    )
    seen: list[Page] = []

    async def walk() -> None:
        async for page in v2_pages(client, account=None):
            seen.append(page)

    with pytest.raises(MalformedResponse, match="same page"):
        await walk()
    assert [len(p.events) for p in seen] == [1, 0]
    assert "Stripe-Context" not in stub.requests[0].headers


async def test_fetch_object_follows_a_related_url_with_stripe_context(
    stub: StripeStub, client: StripeClient
) -> None:
    stub.push(Reply(json={"id": "mtr_1", "object": "billing.meter"}))
    obj = await fetch_object(
        client, f"{stub.base}/v1/billing/meters/mtr_1", account="acct_3", api="v2"
    )
    assert obj == {"id": "mtr_1", "object": "billing.meter"}
    (seen,) = stub.requests
    assert seen.path == "/v1/billing/meters/mtr_1"
    assert seen.headers["Stripe-Context"] == "acct_3"


async def test_fetch_object_of_a_deleted_object_raises_not_found_without_retry(
    stub: StripeStub, client: StripeClient
) -> None:
    stub.push(error(404, "No such meter", type="invalid_request_error", code="resource_missing"))
    with pytest.raises(StripeNotFound):
        await fetch_object(client, "/v1/billing/meters/mtr_9", account=None, api="v1")
    assert len(stub.requests) == 1
