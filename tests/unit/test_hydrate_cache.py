"""Hydrator's fetch cache: a completed fetch serves only events known before it was sent."""

from __future__ import annotations

import asyncio
from typing import Any

from ingestor.config import HydrateConfig
from ingestor.errors import StripeInvalidRequest, StripeNotFound
from ingestor.events import Hydration
from ingestor.hydrate import FetchCache, Hydrator
from tests.unit.test_hydrate import _count, _event, _hydrator

URL = "/v2/core/accounts/acct_1"
KEY = (URL, "acct_ctx")


class Versions:
    """A fetch answering each call with the next version of the object; `gate` holds answers."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.sent = asyncio.Event()

    async def __call__(self, url: str, account: str | None, priority: int = 0) -> dict[str, Any]:
        self.calls += 1
        version = self.calls
        self.sent.set()
        await self.gate.wait()
        return {"id": "acct_1", "version": version}


def _cached(**kw: Any) -> Hydrator:
    kw.setdefault("cache_entries", 16)
    kw.setdefault("cache_bytes", 1 << 20)
    return _hydrator(kw.pop("fetch"), **kw)


async def test_a_finished_fetch_serves_an_event_listed_before_it_was_sent() -> None:
    """An event stamped before a fetch of its object went out uses that fetch's answer after
    it finished (no second request), and the hit is counted as `cached`."""
    fetch = Versions()
    hits = _count("cached")
    async with _cached(fetch=fetch) as hydrator:
        listed = hydrator.stamp()  # both events listed here
        first = await hydrator.hydrate_all([_event(1)], known=listed)
        second = await hydrator.hydrate_all([_event(2)], known=listed)
    assert fetch.calls == 1
    assert first[0].related_object == second[0].related_object == {"id": "acct_1", "version": 1}
    assert _count("cached") - hits == 1


async def test_a_finished_fetch_never_serves_an_event_listed_after_it_was_sent() -> None:
    """An event listed once the fetch's request was out, even while it is still unanswered,
    gets a fetch of its own: the kept answer may predate that event's change."""
    fetch = Versions()
    fetch.gate.clear()
    async with _cached(fetch=fetch) as hydrator:
        first = asyncio.create_task(hydrator.hydrate(_event(1)))
        await fetch.sent.wait()
        listed = hydrator.stamp()  # after the first request went out
        fetch.gate.set()
        await first
        late = await hydrator.hydrate_all([_event(2)], known=listed)
    assert fetch.calls == 2
    assert late[0].related_object == {"id": "acct_1", "version": 2}


async def test_a_fetch_queued_behind_the_slots_when_the_event_was_listed_may_serve_it() -> None:
    """A fetch still waiting for a slot when the event was listed is sent after it, so its
    answer serves that event later, from the cache."""
    fetch = Versions()
    fetch.gate.clear()
    blocker = "/v2/core/accounts/other"
    async with _cached(fetch=fetch, concurrency=1) as hydrator:
        busy = asyncio.create_task(hydrator.hydrate(_event(0, url=blocker)))
        await fetch.sent.wait()
        queued = asyncio.create_task(hydrator.hydrate(_event(1)))
        await asyncio.sleep(0)
        listed = hydrator.stamp()  # the fetch of URL has no slot yet
        fetch.gate.set()
        await busy
        first = await queued
        later = await hydrator.hydrate_all([_event(2)], known=listed)
    assert fetch.calls == 2  # the blocker and URL once
    assert later[0] is first


async def test_failures_are_not_kept_but_not_found_is() -> None:
    """A failed fetch is fetched again for the next event; a 404 (the object is gone at a time
    after the event was listed) serves events listed before it went out."""
    calls = 0

    async def fetch(url: str, account: str | None, priority: int = 0) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if url == URL:
            raise StripeInvalidRequest("bad request", status=400)
        raise StripeNotFound("gone", status=404)

    gone = "/v2/core/accounts/gone"
    async with _cached(fetch=fetch) as hydrator:
        listed = hydrator.stamp()
        failed = await hydrator.hydrate_all([_event(1)], known=listed)
        again = await hydrator.hydrate_all([_event(2)], known=listed)
        missing = await hydrator.hydrate_all([_event(3, url=gone)], known=listed)
        still = await hydrator.hydrate_all([_event(4, url=gone)], known=listed)
    assert [r.status for r in failed + again] == ["failed", "failed"]
    assert [r.status for r in missing + still] == ["not_found", "not_found"]
    assert calls == 3  # URL twice, the 404 once


async def test_without_a_cache_a_finished_fetch_is_not_reused() -> None:
    """cache_entries = 0 turns the cache off: every event after a fetch finished refetches."""
    fetch = Versions()
    async with _cached(fetch=fetch, cache_entries=0) as hydrator:
        listed = hydrator.stamp()
        await hydrator.hydrate_all([_event(1)], known=listed)
        await hydrator.hydrate_all([_event(2)], known=listed)
    assert fetch.calls == 2


def _ok(size: int) -> Hydration:
    return Hydration("ok", 0, {"pad": "x" * size})


def test_the_cache_evicts_the_least_recently_used_past_its_entry_bound() -> None:
    """At most max_entries are kept; a hit makes an entry recent, so the untouched one goes."""
    cache = FetchCache(max_entries=2, max_bytes=1 << 20)
    a, b, c = (("/a", None), ("/b", None), ("/c", None))
    cache.put(a, _ok(1), sent=10)
    cache.put(b, _ok(1), sent=11)
    assert cache.get(a, known=0) is not None  # a is now the most recent
    cache.put(c, _ok(1), sent=12)
    assert len(cache) == 2
    assert cache.get(b, known=0) is None
    assert cache.get(a, known=0) is not None
    assert cache.get(c, known=0) is not None


def test_the_cache_stays_within_its_byte_bound_and_skips_an_object_larger_than_it() -> None:
    """Bytes (objects as JSON) never exceed max_bytes: older entries go first, and an object
    larger than the whole bound is not kept (nor does it evict anything)."""
    cache = FetchCache(max_entries=100, max_bytes=1_000)
    for n in range(10):
        cache.put((f"/o{n}", None), _ok(300), sent=n + 1)
        assert cache.bytes <= 1_000
    assert len(cache) == 3
    assert [cache.get((f"/o{n}", None), known=0) is not None for n in (6, 7, 8, 9)] == [
        False,
        True,
        True,
        True,
    ]
    before = cache.bytes
    cache.put(("/huge", None), _ok(5_000), sent=100)
    assert cache.get(("/huge", None), known=0) is None
    assert (len(cache), cache.bytes) == (3, before)


def test_the_cache_keeps_the_latest_sent_fetch_per_object() -> None:
    """An answer to an older request never replaces one to a newer request (it would serve
    fewer events); a newer one replaces an older one, its bytes counted once."""
    cache = FetchCache(max_entries=10, max_bytes=1 << 20)
    newer, older = _ok(10), _ok(20)
    cache.put(KEY, newer, sent=20)
    cache.put(KEY, older, sent=10)
    assert cache.get(KEY, known=15) is newer
    newest = _ok(10)
    cache.put(KEY, newest, sent=30)
    assert cache.get(KEY, known=25) is newest
    assert cache.get(KEY, known=30) is None  # known at or after the send: never
    assert len(cache) == 1
    assert cache.bytes == len(URL) + len(b'{"pad":"xxxxxxxxxx"}')


def test_the_configured_bounds_reach_the_hydrator() -> None:
    """for_client sizes the cache from hydrate.cache_entries and hydrate.cache_bytes."""

    class Budget:
        def share(self, fraction: float) -> object:
            return object()

    class Client:
        budget = Budget()

    config = HydrateConfig(cache_entries=7, cache_bytes=1234)
    hydrator = Hydrator.for_client(Client(), config)  # type: ignore[arg-type]  # only .budget is used here
    assert (hydrator.cache.max_entries, hydrator.cache.max_bytes) == (7, 1234)
