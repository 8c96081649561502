"""v1/v2 event pagination and object fetches against a scripted local server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from ingestor import pages
from ingestor.config import Secret, StripeConfig
from ingestor.errors import MalformedResponse, StripeNotFound
from ingestor.events import ms_to_rfc3339
from ingestor.metrics import REGISTRY
from ingestor.pages import Page, fetch_object, v1_pages, v2_pages
from ingestor.ratelimit import RateBudget
from ingestor.stripe_api import StripeClient
from tests.unit.stripe_stub import Reply, Script, Seen, StripeStub, error

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


async def test_v2_garbage_page_is_retried_and_a_self_loop_ends_the_walk(
    stub: StripeStub, client: StripeClient
) -> None:
    """A garbage v2 page is retried; a next_page_url pointing at the page just read is a stuck
    cursor: counted, warned, the repeated page dropped and the walk ended (no endless loop)."""
    loop = "/v2/core/events?page=same"
    stub.push(
        Reply(json={"data": [{"id": "evt_x", "type": "t"}], "next_page_url": None}),
        Reply(json={"data": [v2_event(1)], "next_page_url": loop}),
        Reply(json={"data": [v2_event(1)], "next_page_url": loop}),
    )
    stub.fallback = Reply(json={"data": [v2_event(1)], "next_page_url": loop})
    before = anomalies("v2:platform", "stuck_cursor")
    with capture_logs() as logs:
        seen = await collect(v2_pages(client, account=None))
    assert [[e.id for e in p.events] for p in seen] == [["evt_test_0001"]]
    assert len(stub.requests) == 3
    assert anomalies("v2:platform", "stuck_cursor") == before + 1
    (warning,) = [x for x in logs if x.get("kind") == "stuck_cursor"]
    assert warning["cursor"] == loop
    assert "Stripe-Context" not in stub.requests[0].headers


# --- events outside the requested range (a server that ignores the filters) -----------------


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no stream warned yet (the once-per-stream set is process-wide)."""
    monkeypatch.setattr(pages, "_warned", set())


def series(stream: str, kind: str) -> float | None:
    labels = {"stream": stream, "kind": kind}
    return REGISTRY.get_sample_value("ingestor_api_anomalies_total", labels)


def anomalies(stream: str, kind: str) -> float:
    return series(stream, kind) or 0.0


def range_warnings(logs: list[Any]) -> list[Any]:
    return [x for x in logs if x["event"] == "event outside the requested range"]


def v1_list(events: list[dict[str, Any]], *, has_more: bool) -> Reply:
    return Reply(json={"object": "list", "url": "/v1/events", "data": events, "has_more": has_more})


def ignoring_filters(*pages_: Reply) -> Script:
    """Answers page by page (by `starting_after` position) whatever the created filters say."""

    def answer(seen: Seen) -> Reply:
        return pages_[sum(1 for k, _ in seen.query if k == "starting_after")]

    return answer


async def test_v1_events_outside_the_range_are_dropped_counted_and_warned_once_per_stream(
    stub: StripeStub, client: StripeClient
) -> None:
    """With a v1 range [T0, T0+1000) s, an event at T0+1000 (at created[lt]) and one at T0-1
    (before created[gte]) are dropped and counted; T0 and T0+999 are kept. A second walk of the
    same stream counts again without a second warning; another stream warns once too."""
    pages_ = ignoring_filters(
        v1_list([v1_event(1000), v1_event(999)], has_more=True),
        v1_list([v1_event(0), v1_event(-1)], has_more=False),
    )
    stub.fallback = pages_
    before = anomalies("v1:acct_range1", "out_of_range")
    with capture_logs() as logs:
        got = await collect(
            v1_pages(client, account="acct_range1", created_gte=T0, created_lt=T0 + 1000)
        )
        assert [[e.id for e in p.events] for p in got] == [["evt_0999"], ["evt_0000"]]
        assert [p.cursor for p in got] == ["evt_0999", None]  # the walk itself is unchanged
        assert anomalies("v1:acct_range1", "out_of_range") == before + 2
        await collect(v1_pages(client, account="acct_range1", created_gte=T0, created_lt=T0 + 1000))
        assert anomalies("v1:acct_range1", "out_of_range") == before + 4
        await collect(v1_pages(client, account="acct_range2", created_gte=T0, created_lt=T0 + 1000))
    first, second = range_warnings(logs)
    assert first["stream"] == "v1:acct_range1"
    assert (first["event_id"], first["created"]) == ("evt_1000", T0 + 1000)
    assert (first["requested_gte"], first["requested_lt"]) == (T0, T0 + 1000)
    assert first["log_level"] == "warning"
    assert second["stream"] == "v1:acct_range2"
    assert anomalies("v1:acct_range2", "out_of_range") >= 2


async def test_adjacent_reads_each_keep_only_their_own_events_from_a_filterless_server(
    stub: StripeStub, client: StripeClient
) -> None:
    """Two adjacent v1 reads [T0, T0+1000) and [T0+1000, T0+2000) against a server that returns
    the same events to both: each event, boundary ones included, is kept by exactly one read."""
    events = [v1_event(i) for i in (1999, 1000, 999, 0)]
    stub.fallback = v1_list(events, has_more=False)
    kept: list[str] = []
    for lo in (T0, T0 + 1000):
        got = await collect(
            v1_pages(client, account="acct_adj", created_gte=lo, created_lt=lo + 1000)
        )
        kept += [e.id for p in got for e in p.events]
    assert sorted(kept) == sorted(e["id"] for e in events)


async def test_v2_events_outside_the_range_are_dropped_counted_and_warned_once_per_stream(
    stub: StripeStub, client: StripeClient
) -> None:
    """With a v2 range [T0 s, T0 s + 60 ms), events at +60 ms and -1 ms are dropped and counted;
    +0 and +59 ms are kept; the warning names the range as RFC 3339, once per stream."""
    lo, hi = T0 * 1000, T0 * 1000 + 60
    stub.fallback = Reply(
        json={
            "data": [v2_event(60), v2_event(59), v2_event(0), v2_event(-1)],
            "next_page_url": None,
        }
    )
    before = {a: anomalies(f"v2:{a}", "out_of_range") for a in ("acct_v2r1", "acct_v2r2")}
    with capture_logs() as logs:
        for account in ("acct_v2r1", "acct_v2r1", "acct_v2r2"):
            got = await collect(
                v2_pages(client, account=account, created_gte_ms=lo, created_lt_ms=hi)
            )
            assert [e.id for p in got for e in p.events] == ["evt_test_0059", "evt_test_0000"]
    assert anomalies("v2:acct_v2r1", "out_of_range") == before["acct_v2r1"] + 4
    assert anomalies("v2:acct_v2r2", "out_of_range") == before["acct_v2r2"] + 2
    first, second = range_warnings(logs)
    assert (first["stream"], second["stream"]) == ("v2:acct_v2r1", "v2:acct_v2r2")
    assert first["event_id"] == "evt_test_0060"
    assert first["created"] == ms_to_rfc3339(hi)
    assert (first["requested_gte"], first["requested_lt"]) == (ms_to_rfc3339(lo), ms_to_rfc3339(hi))


async def test_a_walk_without_anomalies_exports_both_kinds_at_zero(
    stub: StripeStub, client: StripeClient
) -> None:
    """Reading a stream labels its anomaly counters at 0, so the series exist before any."""
    stub.fallback = V1Events(3)
    with capture_logs() as logs:
        got = await collect(v1_pages(client, account="acct_clean", created_gte=T0))
    assert sum(len(p.events) for p in got) == 3
    assert series("v1:acct_clean", "out_of_range") == 0
    assert series("v1:acct_clean", "stuck_cursor") == 0
    assert not [x for x in logs if x["log_level"] == "warning"]


@pytest.mark.parametrize("has_more", [False, True])
async def test_v1_the_same_old_event_on_every_page_ends_the_walk_at_once(
    stub: StripeStub, client: StripeClient, has_more: bool
) -> None:
    """A server answering every request with one event older than created[gte] (as stripe-mock
    does), has_more false or true, costs one request per walk: the page ends before the range,
    so nothing newer can follow in a newest-first list."""
    stub.fallback = v1_list([v1_event(-100)], has_more=has_more)
    for _ in range(3):
        got = await collect(v1_pages(client, account="acct_old", created_gte=T0))
        assert [p.events for p in got] == [[]]
    assert len(stub.requests) == 3


async def test_v1_a_cursor_that_does_not_advance_is_counted_warned_and_ends_the_walk(
    stub: StripeStub, client: StripeClient
) -> None:
    """has_more true forever with the same page (so the same starting_after): the repeat is
    dropped (never yielded twice), stuck_cursor counted, one warning, and the walk ends after
    the second request instead of looping."""
    stub.fallback = v1_list([v1_event(5), v1_event(4)], has_more=True)
    with capture_logs() as logs:
        got = await collect(v1_pages(client, account="acct_stuck", created_gte=T0))
        again = await collect(v1_pages(client, account="acct_stuck", created_gte=T0))
    assert [[e.id for e in p.events] for p in got] == [["evt_0005", "evt_0004"]]
    assert len(again) == 1
    assert len(stub.requests) == 4
    assert [dict(r.query).get("starting_after") for r in stub.requests[:2]] == [None, "evt_0004"]
    assert anomalies("v1:acct_stuck", "stuck_cursor") >= 2
    (warning,) = [x for x in logs if x.get("kind") == "stuck_cursor"]
    assert warning["stream"] == "v1:acct_stuck"
    assert warning["cursor"] == "evt_0004"


async def test_v1_a_cursor_cycle_ends_the_walk(stub: StripeStub, client: StripeClient) -> None:
    """Cursors A -> B -> A: the walk ends when it would follow A a second time."""
    stub.push(
        v1_list([v1_event(9), v1_event(8)], has_more=True),
        v1_list([v1_event(7), v1_event(6)], has_more=True),
        v1_list([v1_event(9), v1_event(8)], has_more=True),
    )
    got = await collect(v1_pages(client, account="acct_cycle", created_gte=T0))
    assert [e.id for p in got for e in p.events] == [f"evt_{i:04d}" for i in (9, 8, 7, 6)]
    assert len(stub.requests) == 3


async def test_v2_a_page_ending_before_the_range_ends_the_walk(
    stub: StripeStub, client: StripeClient
) -> None:
    """v2 too: a page whose oldest event is before created[gte] is the last one followed."""
    stub.fallback = Reply(json={"data": [v2_event(-5)], "next_page_url": "/v2/core/events?p=2"})
    got = await collect(v2_pages(client, account="acct_v2old", created_gte_ms=T0 * 1000))
    assert [p.events for p in got] == [[]]
    assert len(stub.requests) == 1


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


async def test_v1_skip_leaves_known_events_unbuilt_and_the_walk_unchanged(
    stub: StripeStub, client: StripeClient
) -> None:
    """Events `skip` knows are counted in `skipped`, not built; the others come out in list
    order; the cursors, requests and last listed time are those of the walk without it."""
    stub.fallback = V1Events(250)
    known = {f"evt_{i:04d}" for i in range(0, 250) if i % 3}
    asked: list[tuple[str, int]] = []

    def skip(event_id: str, created_ms: int) -> bool:
        asked.append((event_id, created_ms))
        return event_id in known

    got = await collect(v1_pages(client, account=None, created_gte=T0, limit=100, skip=skip))
    assert [e.id for p in got for e in p.events] == [
        f"evt_{i:04d}" for i in reversed(range(250)) if i % 3 == 0
    ]
    assert sum(p.skipped for p in got) == len(known)
    assert sum(p.skipped + len(p.events) for p in got) == 250
    assert [p.cursor for p in got] == ["evt_0150", "evt_0050", None]
    assert [p.last_created_ms for p in got] == [(T0 + i) * 1000 for i in (150, 50, 0)]
    assert ("evt_0249", (T0 + 249) * 1000) in asked
    assert len(stub.requests) == 3


async def test_v1_a_page_of_only_known_events_still_ends_a_walk_below_the_range(
    stub: StripeStub, client: StripeClient
) -> None:
    """A server ignoring created[gte] (has_more forever): the walk still ends at the page that
    ends before the range even when `skip` knows all of that page's in-range events."""
    stub.fallback = ignoring_filters(
        v1_list([v1_event(3), v1_event(2)], has_more=True),
        v1_list([v1_event(1), v1_event(-1)], has_more=True),
        v1_list([v1_event(-2), v1_event(-3)], has_more=True),
    )
    got = await collect(
        v1_pages(client, account="acct_skipbelow", created_gte=T0, skip=lambda _i, _c: True)
    )
    assert [p.skipped for p in got] == [2, 1]
    assert [p.events for p in got] == [[], []]
    assert len(stub.requests) == 2


async def test_v1_skip_never_hides_an_event_outside_the_range(
    stub: StripeStub, client: StripeClient
) -> None:
    """An out-of-range event is never offered to `skip`: it is still counted as an anomaly
    (finding 9) even when the reader says it has every id."""
    stub.fallback = v1_list([v1_event(1000), v1_event(999), v1_event(-1)], has_more=False)
    before = anomalies("v1:acct_skiprange", "out_of_range")
    asked: list[str] = []

    def skip(event_id: str, created_ms: int) -> bool:
        asked.append(event_id)
        return True

    got = await collect(
        v1_pages(client, account="acct_skiprange", created_gte=T0, created_lt=T0 + 1000, skip=skip)
    )
    assert asked == ["evt_0999"]
    assert [(p.events, p.skipped) for p in got] == [([], 1)]
    assert anomalies("v1:acct_skiprange", "out_of_range") == before + 2


async def test_v1_skip_does_not_cover_a_malformed_event(
    stub: StripeStub, client: StripeClient
) -> None:
    """An event with an empty type is refused as malformed (and retried) even if `skip`
    would take its id: skipping never weakens validation of what was listed."""
    bad = {**v1_event(5), "type": ""}
    stub.fallback = v1_list([bad], has_more=False)
    with pytest.raises(MalformedResponse):
        await collect(v1_pages(client, account=None, created_gte=T0, skip=lambda _i, _c: True))
