"""Hydrator: coalescing never into older fetches, retries, failures, bounds and ordering."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ingestor.errors import (
    ClosedError,
    StripeAuthError,
    StripeNotFound,
    StripeServerError,
)
from ingestor.events import Event
from ingestor.hydrate import Hydrator, describe_error
from ingestor.metrics import HYDRATION_REQUESTS


class Clock:
    def __init__(self, now_ms: int = 1_000_000) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


class Sleeps:
    """Records backoff delays instead of sleeping, so tests run instantly."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def _event(
    n: int = 0, url: str | None = "/v2/core/accounts/acct_1", created_ms: int = 1_000_000
) -> Event:
    related = {"id": "acct_1", "type": "v2.core.account", "url": url} if url else None
    return Event(
        id=f"evt_{n}",
        type="v2.core.account.updated",
        api="v2",
        account="acct_ctx",
        created_ms=created_ms,
        livemode=False,
        api_version=None,
        object_id="acct_1" if url else None,
        payload={"id": f"evt_{n}", "related_object": related},
        related_url=url,
    )


def _count(result: str) -> float:
    value = HYDRATION_REQUESTS.labels(result=result)._value.get()
    assert isinstance(value, float)
    return value


def _hydrator(fetch: Any, **kw: Any) -> Hydrator:
    kw.setdefault("concurrency", 4)
    kw.setdefault("max_attempts", 3)
    kw.setdefault("clock_ms", Clock())
    kw.setdefault("sleep", Sleeps())
    kw.setdefault("jitter", lambda: 0.5)
    return Hydrator(fetch, **kw)


async def test_ten_concurrent_hydrations_of_one_object_share_one_fetch() -> None:
    calls: list[tuple[str, str | None]] = []
    release = asyncio.Event()

    async def fetch(url: str, account: str | None) -> dict[str, Any]:
        calls.append((url, account))
        await release.wait()
        return {"id": "acct_1"}

    coalesced_before = _count("coalesced")
    async with _hydrator(fetch) as hydrator:
        waiting = [asyncio.create_task(hydrator.hydrate(_event(i))) for i in range(10)]
        await asyncio.sleep(0)
        release.set()
        results = await asyncio.gather(*waiting)
    assert calls == [("/v2/core/accounts/acct_1", "acct_ctx")]
    assert all(r.status == "ok" and r.related_object == {"id": "acct_1"} for r in results)
    assert _count("coalesced") - coalesced_before == 9


async def test_no_coalescing_into_a_fetch_that_started_before_the_event_was_created() -> None:
    clock = Clock(1_000)
    release = asyncio.Event()
    calls = 0

    async def fetch(url: str, account: str | None) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        version = calls
        await release.wait()
        return {"id": "acct_1", "version": version}

    async with _hydrator(fetch, clock_ms=clock) as hydrator:
        early = asyncio.create_task(hydrator.hydrate(_event(1, created_ms=900)))
        await asyncio.sleep(0)
        clock.now_ms = 2_000
        # Created after the first fetch started: its change may be missing from that fetch.
        late = asyncio.create_task(hydrator.hydrate(_event(2, created_ms=1_500)))
        # Created before the second fetch started: may share it.
        same = asyncio.create_task(hydrator.hydrate(_event(3, created_ms=2_000)))
        await asyncio.sleep(0)
        release.set()
        first, second, third = await asyncio.gather(early, late, same)
    assert calls == 2
    assert first.related_object == {"id": "acct_1", "version": 1}
    assert second.related_object == {"id": "acct_1", "version": 2}
    assert third.related_object == {"id": "acct_1", "version": 2}


async def test_finished_fetch_is_not_reused_by_later_events() -> None:
    calls = 0

    async def fetch(url: str, account: str | None) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"n": calls}

    async with _hydrator(fetch) as hydrator:
        a = await hydrator.hydrate(_event(1))
        b = await hydrator.hydrate(_event(2))
    assert (a.related_object, b.related_object) == ({"n": 1}, {"n": 2})


async def test_not_found_becomes_not_found_without_retrying() -> None:
    sleeps = Sleeps()

    async def fetch(url: str, account: str | None) -> dict[str, Any]:
        raise StripeNotFound("no such account", status=404, request_id="req_404")

    async with _hydrator(fetch, sleep=sleeps, clock_ms=Clock(5)) as hydrator:
        result = await hydrator.hydrate(_event())
    assert result.status == "not_found"
    assert result.related_object is None
    assert result.fetched_at_ms == 5
    assert sleeps.delays == []


async def test_retriable_errors_are_retried_with_exponential_backoff_then_succeed() -> None:
    sleeps = Sleeps()
    attempts = 0

    async def fetch(url: str, account: str | None) -> dict[str, Any]:
        nonlocal attempts
        attempts += 1
        if attempts < 4:
            raise StripeServerError("busy", status=503)
        return {"id": "acct_1"}

    retries_before = _count("retry")
    hydrator = _hydrator(fetch, max_attempts=5, sleep=sleeps, backoff_base=0.2, backoff_max=0.5)
    async with hydrator:
        result = await hydrator.hydrate(_event())
    assert result.status == "ok"
    assert attempts == 4
    # jitter 0.5 -> three quarters of each step; steps 0.2, 0.4, then capped at 0.5.
    assert sleeps.delays == pytest.approx([0.15, 0.3, 0.375])
    assert _count("retry") - retries_before == 3


async def test_exhausted_budget_fails_with_a_one_line_reason() -> None:
    attempts = 0

    async def fetch(url: str, account: str | None) -> dict[str, Any]:
        nonlocal attempts
        attempts += 1
        raise StripeServerError("upstream\ntimeout", status=502, request_id="req_9")

    failed_before = _count("failed")
    async with _hydrator(fetch, max_attempts=3) as hydrator:
        result = await hydrator.hydrate(_event())
    assert attempts == 3
    assert result.status == "failed"
    assert result.error == (
        "gave up after 3 attempts: StripeServerError: upstream timeout (request req_9)"
    )
    assert _count("failed") - failed_before == 1


async def test_non_retriable_error_fails_at_once() -> None:
    attempts = 0

    async def fetch(url: str, account: str | None) -> dict[str, Any]:
        nonlocal attempts
        attempts += 1
        raise StripeAuthError("bad key", status=401)

    async with _hydrator(fetch, max_attempts=5) as hydrator:
        result = await hydrator.hydrate(_event())
    assert attempts == 1
    assert result.status == "failed"
    assert result.error == "StripeAuthError: bad key"


async def test_event_without_related_object_is_ok_with_null_object() -> None:
    async def fetch(url: str, account: str | None) -> dict[str, Any]:
        raise AssertionError("must not fetch")

    async with _hydrator(fetch, clock_ms=Clock(77)) as hydrator:
        result = await hydrator.hydrate(_event(url=None))
    assert (result.status, result.related_object, result.fetched_at_ms) == ("ok", None, 77)


async def test_concurrency_bound_is_respected() -> None:
    in_flight = 0
    peak = 0

    async def fetch(url: str, account: str | None) -> dict[str, Any]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        in_flight -= 1
        return {"url": url}

    events = [_event(i, url=f"/v2/core/accounts/acct_{i}") for i in range(50)]
    async with _hydrator(fetch, concurrency=3) as hydrator:
        results = await hydrator.hydrate_all(events)
    assert peak == 3
    assert [r.related_object for r in results] == [{"url": e.related_url} for e in events]


async def test_order_is_preserved_and_one_poison_event_does_not_block_others() -> None:
    async def fetch(url: str, account: str | None) -> dict[str, Any]:
        if url.endswith("poison"):
            raise RuntimeError("unexpected shape")
        # Later events finish first, so order comes from the API, not from completion.
        await asyncio.sleep(0.001 * (10 - int(url.rsplit("_", 1)[1])))
        return {"url": url}

    events = [_event(i, url=f"/v2/core/accounts/acct_{i}") for i in range(10)]
    events.insert(4, _event(99, url="/v2/core/accounts/poison"))
    async with _hydrator(fetch) as hydrator:
        results = await hydrator.hydrate_all(events)
    assert [r.status for r in results] == ["ok"] * 4 + ["failed"] + ["ok"] * 6
    assert results[4].error == "RuntimeError: unexpected shape"
    ok = [r.related_object for i, r in enumerate(results) if i != 4]
    assert ok == [{"url": f"/v2/core/accounts/acct_{i}"} for i in range(10)]


async def test_cancelled_waiter_does_not_cancel_a_shared_fetch() -> None:
    release = asyncio.Event()

    async def fetch(url: str, account: str | None) -> dict[str, Any]:
        await release.wait()
        return {"id": "acct_1"}

    async with _hydrator(fetch) as hydrator:
        first = asyncio.create_task(hydrator.hydrate(_event(1)))
        second = asyncio.create_task(hydrator.hydrate(_event(2)))
        await asyncio.sleep(0)
        first.cancel()
        release.set()
        result = await second
        with pytest.raises(asyncio.CancelledError):
            await first
    assert result.related_object == {"id": "acct_1"}


async def test_use_outside_the_context_manager_is_refused() -> None:
    async def fetch(url: str, account: str | None) -> dict[str, Any]:
        return {}

    with pytest.raises(ClosedError):
        await _hydrator(fetch).hydrate(_event())


def test_describe_error_is_one_bounded_line() -> None:
    line = describe_error(StripeServerError("a\n" * 500, request_id="req_1"))
    assert "\n" not in line
    assert len(line) == 300
    assert line.startswith("StripeServerError: a a")
