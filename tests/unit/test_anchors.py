"""Cursor anchors: a busy v1 second re-read by parallel walks lists exactly what one walk does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from ingestor.anchors import MAX_PAGES, Anchors, Listing, chains
from ingestor.config import Secret, StripeConfig
from ingestor.errors import StripeAuthError
from ingestor.pages import v1_pages, v1_second
from ingestor.ratelimit import RateBudget
from ingestor.stripe_api import StripeClient
from tests.unit.stripe_stub import Reply, Seen, StripeStub, error

T0 = 1_760_000_000


def ids(n: int, prefix: str = "evt_") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


def test_a_complete_second_is_walked_from_each_page_end_of_its_last_listing() -> None:
    """500 ids listed after the second ended: five walks, each one page (the last to the end)."""
    listed = ids(500)
    assert chains(Listing(tuple(listed), complete=True), 100) == [
        (None, listed[99]),
        (listed[99], listed[199]),
        (listed[199], listed[299]),
        (listed[299], listed[399]),
        (listed[399], None),
    ]


def test_a_second_still_filling_gets_a_first_walk_down_to_its_newest_listed_id() -> None:
    """Listed while it filled: the first walk stops at the newest id listed, so it reads only
    what arrived since (the top of the second), and the rest stay one page each."""
    listed = ids(250)
    assert chains(Listing(tuple(listed), complete=False), 100) == [
        (None, listed[0]),
        (listed[0], listed[99]),
        (listed[99], listed[199]),
        (listed[199], None),
    ]


@pytest.mark.parametrize("complete", [True, False])
def test_less_than_a_page_or_more_than_max_pages_is_walked_once_from_the_top(
    complete: bool,
) -> None:
    """Under a page one walk costs what the walks would; past `MAX_PAGES` pages the polls are
    rate-bound and walks by the hundred would only queue."""
    assert chains(Listing(tuple(ids(99)), complete), 100) == [(None, None)]
    assert chains(Listing((), complete), 100) == [(None, None)]
    assert chains(Listing(tuple(ids(MAX_PAGES * 100 + 1)), complete), 100) == [(None, None)]
    assert len(chains(Listing(tuple(ids(MAX_PAGES * 100)), complete), 100)) >= MAX_PAGES


def test_anchors_keep_one_listing_per_second_and_prune_below_a_time() -> None:
    anchors = Anchors()
    anchors.put(1000, ["a"], complete=True)
    anchors.put(2000, ["b", "c"], complete=False)
    anchors.put(2000, ["d"], complete=True)
    assert anchors.get(2000) == Listing(("d",), True)
    anchors.prune(2000)
    assert anchors.get(1000) is None
    assert len(anchors) == 1


class OneSecond:
    """A v1 list of one second (newest first) that honours `limit` and `starting_after` and
    can change between reads, as Stripe's does: new events on top, late ones in between."""

    def __init__(self, listed: list[str]) -> None:
        self.ids = list(listed)
        self.requests = 0

    def __call__(self, seen: Seen) -> Reply:
        self.requests += 1
        q = dict(seen.query)
        limit = int(q.get("limit", "10"))
        start = 1 + self.ids.index(q["starting_after"]) if "starting_after" in q else 0
        chunk = [self.event(i) for i in self.ids[start : start + limit]]
        more = start + limit < len(self.ids)
        return Reply(json={"object": "list", "url": "/v1/events", "data": chunk, "has_more": more})

    @staticmethod
    def event(event_id: str) -> dict[str, Any]:
        return {
            "id": event_id,
            "object": "event",
            "type": "charge.succeeded",
            "created": T0,
            "livemode": False,
            "api_version": "2024-06-20",
            "data": {"object": {"id": "ch_1", "object": "charge"}},
        }


@pytest.fixture
async def client(stub: StripeStub) -> AsyncIterator[StripeClient]:
    cfg = StripeConfig(api_key=Secret("sk_test_anchors"), api_base=stub.base, max_retries=1)
    async with StripeClient(cfg, budget=RateBudget(1000.0)) as c:
        yield c


@pytest.mark.parametrize("complete", [True, False])
async def test_parallel_walks_list_the_second_exactly_as_one_walk_would_now(
    stub: StripeStub, client: StripeClient, complete: bool
) -> None:
    """A second listed once (500 ids), then grown by 150 new events on top and 3 late ones
    inserted mid-list: the anchored walks return every id once, in the list's order, with
    no more requests than one walk plus one per walk."""
    first = ids(500)
    server = OneSecond(first)
    stub.fallback = server
    later = ids(150, "new_")
    server.ids = [*later, *first[:120], "late_a", *first[120:250], "late_b"]
    server.ids += [*first[250:480], "late_c", *first[480:]]
    walks = chains(Listing(tuple(first), complete), 100)
    second = await v1_second(client, account=None, second=T0, walks=walks)
    listed = [e.id for p in second.pages for e in p.events]
    assert listed == server.ids
    assert second.ids == server.ids
    sequential = -(-len(server.ids) // 100)
    assert server.requests <= sequential + len(walks)
    server.requests = 0
    walk = v1_pages(client, account=None, created_gte=T0)
    one_walk = [e.id async for p in walk for e in p.events]
    assert one_walk == listed
    assert server.requests == sequential


async def test_a_walk_that_fails_raises_its_own_error_not_a_group(
    stub: StripeStub, client: StripeClient
) -> None:
    """One walk refused (a revoked key answers 401) cancels the others and raises that error
    itself, so the tail's retry tells it from a retriable one as for any single walk."""
    first = ids(300)
    server = OneSecond(first)

    def refuse_one(seen: Seen) -> Reply:
        if dict(seen.query).get("starting_after") == first[199]:
            return error(401, "Invalid API Key provided", type="invalid_request_error")
        return server(seen)

    stub.fallback = refuse_one
    walks = chains(Listing(tuple(first), complete=True), 100)
    with pytest.raises(StripeAuthError):
        await v1_second(client, account=None, second=T0, walks=walks)


async def test_events_left_out_by_skip_are_still_listed_and_still_end_a_walk(
    stub: StripeStub, client: StripeClient
) -> None:
    """A busy poll skips what it published (unbuilt): the walks still stop at their anchors
    (themselves skipped) and list every id for the next poll, while only the new and late
    events are built."""
    first = ids(400)
    server = OneSecond(first)
    stub.fallback = server
    server.ids = [*ids(30, "new_"), *first[:250], "late_a", *first[250:]]
    walks = chains(Listing(tuple(first), complete=False), 100)
    second = await v1_second(
        client, account=None, second=T0, walks=walks, skip=lambda i, _: i.startswith("evt_")
    )
    assert second.ids == server.ids
    assert [e.id for p in second.pages for e in p.events] == [*ids(30, "new_"), "late_a"]
    assert server.requests <= len(walks) + 1
