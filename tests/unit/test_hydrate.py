"""Hydrator: coalescing never into older fetches, retries, failures, bounds and ordering."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Mapping
from typing import Any

import pytest

from ingestor.config import HydrateConfig, Secret, StripeConfig
from ingestor.errors import (
    ClosedError,
    StripeAuthError,
    StripeInvalidRequest,
    StripeNotFound,
    StripeRateLimited,
    StripeServerError,
)
from ingestor.events import Event
from ingestor.hydrate import Hydrator, describe_error
from ingestor.limits import Priority
from ingestor.metrics import HYDRATION_REQUESTS, REGISTRY
from ingestor.ratelimit import RateBudget
from ingestor.stripe_api import StripeClient
from ingestor.transport import HttpResponse
from tests.unit.stripe_stub import Reply, StripeStub, error


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

    async def fetch(url: str, account: str | None, priority: int = 0) -> dict[str, Any]:
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

    async def fetch(url: str, account: str | None, priority: int = 0) -> dict[str, Any]:
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

    async def fetch(url: str, account: str | None, priority: int = 0) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"n": calls}

    async with _hydrator(fetch) as hydrator:
        a = await hydrator.hydrate(_event(1))
        b = await hydrator.hydrate(_event(2))
    assert (a.related_object, b.related_object) == ({"n": 1}, {"n": 2})


async def test_not_found_becomes_not_found_without_retrying() -> None:
    sleeps = Sleeps()

    async def fetch(url: str, account: str | None, priority: int = 0) -> dict[str, Any]:
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

    async def fetch(url: str, account: str | None, priority: int = 0) -> dict[str, Any]:
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

    async def fetch(url: str, account: str | None, priority: int = 0) -> dict[str, Any]:
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

    async def fetch(url: str, account: str | None, priority: int = 0) -> dict[str, Any]:
        nonlocal attempts
        attempts += 1
        raise StripeAuthError("bad key", status=401)

    async with _hydrator(fetch, max_attempts=5) as hydrator:
        result = await hydrator.hydrate(_event())
    assert attempts == 1
    assert result.status == "failed"
    assert result.error == "StripeAuthError: bad key"


async def test_event_without_related_object_is_ok_with_null_object() -> None:
    async def fetch(url: str, account: str | None, priority: int = 0) -> dict[str, Any]:
        raise AssertionError("must not fetch")

    async with _hydrator(fetch, clock_ms=Clock(77)) as hydrator:
        result = await hydrator.hydrate(_event(url=None))
    assert (result.status, result.related_object, result.fetched_at_ms) == ("ok", None, 77)


async def test_concurrency_bound_is_respected() -> None:
    in_flight = 0
    peak = 0

    async def fetch(url: str, account: str | None, priority: int = 0) -> dict[str, Any]:
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


async def test_a_sweeps_late_event_is_fetched_before_a_queued_backlog_and_not_with_it() -> None:
    """With every slot busy and a backlog queued at hydration priority, an event hydrated at a
    better priority gets the next slot, its fetch carries that priority, and it does not wait
    on a queued fetch of the same object (it would wait behind the whole backlog)."""
    release = asyncio.Event()
    order: list[tuple[str, int]] = []

    async def fetch(url: str, account: str | None, priority: int = 0) -> dict[str, Any]:
        order.append((url.rsplit("/", 1)[1], priority))
        await release.wait()
        return {"url": url}

    backlog = [_event(i, url=f"/v2/core/accounts/acct_{i}") for i in range(6)]
    late = _event(99, url="/v2/core/accounts/acct_5")
    async with _hydrator(fetch, concurrency=2) as hydrator:
        queued = asyncio.create_task(hydrator.hydrate_all(backlog, priority=Priority.HYDRATE))
        await asyncio.sleep(0.01)
        assert len(order) == 2  # two slots taken, four fetches queued (acct_5 among them)
        first = asyncio.create_task(hydrator.hydrate_all([late], priority=Priority.TAIL))
        await asyncio.sleep(0.01)
        release.set()
        [result] = await first
        await queued
    assert result.status == "ok"
    hydrate = Priority.HYDRATE
    assert order[:2] == [("acct_0", hydrate), ("acct_1", hydrate)]
    assert order[2] == ("acct_5", Priority.TAIL)
    assert order[3:] == [(f"acct_{i}", hydrate) for i in range(2, 6)]


async def test_order_is_preserved_and_one_poison_event_does_not_block_others() -> None:
    async def fetch(url: str, account: str | None, priority: int = 0) -> dict[str, Any]:
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

    async def fetch(url: str, account: str | None, priority: int = 0) -> dict[str, Any]:
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
    async def fetch(url: str, account: str | None, priority: int = 0) -> dict[str, Any]:
        return {}

    with pytest.raises(ClosedError):
        await _hydrator(fetch).hydrate(_event())


def test_describe_error_is_one_bounded_line() -> None:
    line = describe_error(StripeServerError("a\n" * 500, request_id="req_1"))
    assert "\n" not in line
    assert len(line) == 300
    assert line.startswith("StripeServerError: a a")


# --- Stripe-Should-Retry ------------------------------------------------------------------


async def test_should_retry_true_retries_a_status_that_is_normally_final() -> None:
    """`Stripe-Should-Retry: true` on a 400 (never retried by status) gets another attempt."""
    attempts = 0

    async def fetch(url: str, account: str | None, priority: int = 0) -> dict[str, Any]:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise StripeInvalidRequest("try again", status=400, should_retry=True)
        return {"id": "acct_1"}

    async with _hydrator(fetch, max_attempts=3) as hydrator:
        result = await hydrator.hydrate(_event())
    assert attempts == 2
    assert (result.status, result.related_object) == ("ok", {"id": "acct_1"})


@pytest.mark.parametrize(
    "exc",
    [
        StripeServerError("busy", status=503, should_retry=False),
        StripeRateLimited("slow", status=429, should_retry=False),
    ],
    ids=["503", "429"],
)
async def test_should_retry_false_never_retries_even_a_retriable_status(exc: Exception) -> None:
    """`Stripe-Should-Retry: false` makes a 5xx/429 final: one attempt, then `failed`."""
    attempts = 0
    sleeps = Sleeps()

    async def fetch(url: str, account: str | None, priority: int = 0) -> dict[str, Any]:
        nonlocal attempts
        attempts += 1
        raise exc

    async with _hydrator(fetch, max_attempts=5, sleep=sleeps) as hydrator:
        result = await hydrator.hydrate(_event())
    assert attempts == 1
    assert sleeps.delays == []
    assert result.status == "failed"
    assert result.error is not None
    assert not result.error.startswith("gave up")


def _stripe_config(base: str) -> StripeConfig:
    return StripeConfig(
        api_key=Secret("sk_test_hydrate"), api_base=base, backoff_base=0.001, backoff_max=0.01
    )


async def test_should_retry_header_reaches_the_hydrator_through_the_real_client(
    stub: StripeStub,
) -> None:
    """The header parsed by StripeClient decides the hydrator's retries, both ways."""
    again = error(400, "try again", type="invalid_request_error")
    again.headers["Stripe-Should-Retry"] = "true"
    final = error(503, "no", type="api_error")
    final.headers["Stripe-Should-Retry"] = "false"
    stub.push(again, Reply(json={"id": "acct_1"}), final)
    sleeps = Sleeps()
    client = StripeClient(_stripe_config(stub.base), budget=RateBudget(1000.0))
    async with client, Hydrator.for_client(client, HydrateConfig(), sleep=sleeps) as hydrator:
        first = await hydrator.hydrate(_event(1, url=f"{stub.base}/v2/core/accounts/acct_1"))
        second = await hydrator.hydrate(_event(2, url=f"{stub.base}/v2/core/accounts/acct_2"))
    assert (first.status, first.related_object) == ("ok", {"id": "acct_1"})
    assert second.status == "failed"
    assert len(stub.requests) == 3  # 400 retried once; the 503 not at all
    assert len(sleeps.delays) == 1


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"{name}_total", labels) or 0.0


async def test_a_hydration_retry_is_counted_once_as_an_api_retry_and_each_error_once(
    stub: StripeStub,
) -> None:
    """Three 503s then success: 3 errors and 3 API retries counted, not more, not fewer
    (the client's attempt and the hydrator's decision both see each error)."""
    stub.push(*[error(503, "busy", type="api_error")] * 3, Reply(json={"id": "acct_1"}))
    errors_before = _sample("ingestor_errors", kind="StripeServerError")
    retries_before = _sample("ingestor_api_retries", reason="server_error")
    async with StripeClient(_stripe_config(stub.base), budget=RateBudget(1000.0)) as client:
        hydrator = Hydrator.for_client(client, HydrateConfig(), sleep=Sleeps())
        async with hydrator:
            result = await hydrator.hydrate(_event(url=f"{stub.base}/v2/core/accounts/acct_1"))
    assert result.status == "ok"
    assert _sample("ingestor_errors", kind="StripeServerError") - errors_before == 3
    assert _sample("ingestor_api_retries", reason="server_error") - retries_before == 3


# --- the budget share ---------------------------------------------------------------------


class VirtualTime:
    """A clock that moves only when every task is idle, to the earliest sleeper's wake time."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._seq), future))
        await future

    async def run(self, until: float, done: asyncio.Task[Any] | None = None) -> None:
        """Advances time up to `until`, or until `done` finishes."""
        while done is None or not done.done():
            for _ in range(200):  # let every ready task run until it blocks on the clock
                await asyncio.sleep(0)
            if not self._sleepers or self._sleepers[0][0] > until:
                return
            self.now, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)


class Answering:
    """A transport that answers every request at once, noting when (virtual time) and what."""

    def __init__(self, clock: VirtualTime) -> None:
        self.clock = clock
        self.sent: list[tuple[float, str]] = []

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        data: Mapping[str, str] | None,
        *,
        total_seconds: float,
        stall_seconds: float,
    ) -> HttpResponse:
        self.sent.append((self.clock.now, "hydrate" if "/v2/" in url else "poll"))
        return HttpResponse(200, {"Request-Id": "req_1"}, b'{"id": "obj"}')

    async def close(self) -> None:
        pass


async def test_budget_share_caps_hydration_and_leaves_the_rest_to_polls() -> None:
    """A burst of 200 thin events under a 0.5 share of 10 req/s gets ~5 req/s; a poll
    running beside it still gets the other ~5 req/s (without a share it would get ~1/17)."""
    clock = VirtualTime()
    budget = RateBudget(10.0, burst=1.0, clock=clock, sleep=clock.sleep, report=False)
    transport = Answering(clock)
    config = _stripe_config("http://127.0.0.1:9")
    async with StripeClient(config, transport=transport, budget=budget) as client:

        async def poll_forever() -> None:
            while True:
                await client.request_json("GET", "/v1/events")

        hydrate = HydrateConfig(concurrency=16, budget_share=0.5)
        events = [
            _event(i, url=f"http://127.0.0.1:9/v2/core/accounts/acct_{i}") for i in range(200)
        ]
        async with Hydrator.for_client(client, hydrate) as hydrator, asyncio.TaskGroup() as tg:
            poller = tg.create_task(poll_forever())
            burst = tg.create_task(hydrator.hydrate_all(events))
            await clock.run(until=20.0)
            poller.cancel()
            await clock.run(until=float("inf"), done=burst)
    window = [kind for at, kind in transport.sent if at <= 20.0]
    hydrations, polls = window.count("hydrate"), window.count("poll")
    assert hydrations <= 5 * 20 + 2  # the share's rate, plus its one-token burst
    assert polls >= 90  # the rest of 10 req/s x 20 s went to the poll
    assert hydrations + polls <= 10 * 20 + 2
    assert all(r.status == "ok" for r in burst.result())


# --- the deadline -------------------------------------------------------------------------


async def test_deadline_turns_a_never_answering_fetch_into_failed_within_the_deadline() -> None:
    """A fetch that never answers yields `failed` once deadline_seconds pass, not never."""

    async def fetch(url: str, account: str | None, priority: int = 0) -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    started = time.monotonic()
    async with asyncio.timeout(5), _hydrator(fetch, deadline_seconds=0.2) as hydrator:
        results = await hydrator.hydrate_all([_event(1), _event(2)])
    elapsed = time.monotonic() - started
    assert [r.status for r in results] == ["failed", "failed"]
    assert results[0].error is not None
    assert "deadline" in results[0].error
    assert 0.2 <= elapsed < 1.5


async def test_deadline_also_bounds_retries_and_their_backoff() -> None:
    """A fetch failing retriably forever stops at the deadline, not after every attempt."""
    attempts = 0

    async def fetch(url: str, account: str | None, priority: int = 0) -> dict[str, Any]:
        nonlocal attempts
        attempts += 1
        raise StripeServerError("busy", status=503)

    hydrator = _hydrator(
        fetch,
        max_attempts=1_000_000,
        deadline_seconds=0.2,
        backoff_base=0.01,
        backoff_max=0.02,
        sleep=asyncio.sleep,
    )
    started = time.monotonic()
    async with asyncio.timeout(5), hydrator:
        result = await hydrator.hydrate(_event())
    assert result.status == "failed"
    assert result.error is not None
    assert "deadline" in result.error
    assert 2 <= attempts < 1_000_000
    assert time.monotonic() - started < 1.5


# --- coalescing on our own clock ----------------------------------------------------------


@pytest.mark.parametrize("created_ms", [0, 32_503_680_000_000], ids=["1970", "year-3000"])
async def test_coalescing_ignores_stripe_created(created_ms: int) -> None:
    """Whatever Stripe's `created` says, events known before a fetch's request went out
    share it, and an event known after it went out gets a fetch of its own."""
    calls = 0
    gate = asyncio.Event()
    sent = [asyncio.Event(), asyncio.Event()]

    async def fetch(url: str, account: str | None, priority: int = 0) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        version = calls
        sent[version - 1].set()
        await gate.wait()
        return {"version": version}

    async with _hydrator(fetch) as hydrator:
        # Ten events known together: one fetch, not yet sent when the others join it.
        first = asyncio.create_task(
            hydrator.hydrate_all([_event(i, created_ms=created_ms) for i in range(10)])
        )
        await sent[0].wait()
        # Known after the first request went out: that answer may predate this event.
        later = asyncio.create_task(hydrator.hydrate(_event(10, created_ms=created_ms)))
        await sent[1].wait()
        gate.set()
        early, late = await first, await later
    assert calls == 2
    assert [r.related_object for r in early] == [{"version": 1}] * 10
    assert late.related_object == {"version": 2}


async def test_concurrent_hydrate_all_from_two_readers_needs_no_lock() -> None:
    """Two readers of one stream hydrating at once each get their own events' objects, a
    reader arriving after a request went out never shares it, and nothing deadlocks."""
    sent: list[str] = []
    gate = asyncio.Event()
    both_sent = asyncio.Event()

    async def fetch(url: str, account: str | None, priority: int = 0) -> dict[str, Any]:
        sent.append(url)
        if len(sent) == 2:
            both_sent.set()
        await gate.wait()
        return {"url": url}

    shared = "/v2/core/accounts/acct_shared"
    async with _hydrator(fetch, concurrency=2) as hydrator:
        a = asyncio.create_task(
            hydrator.hydrate_all([_event(1, url=shared), _event(2, url="/v2/core/accounts/a")])
        )
        await both_sent.wait()
        b = asyncio.create_task(
            hydrator.hydrate_all([_event(3, url="/v2/core/accounts/b"), _event(4, url=shared)])
        )
        await asyncio.sleep(0)
        gate.set()
        ra, rb = await asyncio.gather(a, b)
    assert [r.related_object["url"] for r in ra + rb if r.related_object] == [
        shared,
        "/v2/core/accounts/a",
        "/v2/core/accounts/b",
        shared,
    ]
    assert sent.count(shared) == 2  # b's event came after a's request: a fetch of its own
