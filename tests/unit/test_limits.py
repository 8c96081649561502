"""Stripe's limiters in the client: each bucket and cap, the reason header, priorities and
lock_timeout, on a manual clock or against a scripted server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from ingestor.config import Secret, StripeConfig
from ingestor.errors import StripeLockTimeout, StripeRateLimited
from ingestor.limits import ConcurrencyCap, Limits, Priority
from ingestor.metrics import REGISTRY
from ingestor.ratelimit import RateBudget
from ingestor.stripe_api import StripeClient
from tests.unit.stripe_stub import Reply, StripeStub, error

KEY = "sk_test_51LimitsKEYneverSHOWN"
OK = Reply(json={"object": "list", "data": [], "has_more": False})


class ManualClock:
    """Time moves only when the test calls `advance`; sleepers wake at their deadlines."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, fut))
        await fut

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [f for at, f in self._sleepers if at <= self.now + 1e-9]
        self._sleepers = [(at, f) for at, f in self._sleepers if at > self.now + 1e-9]
        for fut in due:
            if not fut.done():
                fut.set_result(None)
        await settle()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def limits(clock: ManualClock, **kw: Any) -> Limits:
    values: dict[str, Any] = {
        "rate": 100.0,
        "endpoint_rate": 10.0,
        "files_rate": 20.0,
        "concurrency": 50,
        "endpoint_concurrency": 25,
        "clock": clock,
        "sleep": clock.sleep,
    }
    values.update(kw)
    return Limits(**values)


async def admitted_within(lim: Limits, names: list[str], seconds: float, clock: ManualClock) -> int:
    """How many requests (round-robin over `names`, one task each, all queued at once) get
    through `lim` in `seconds` of manual time."""
    done = 0

    async def one(name: str) -> None:
        nonlocal done
        async with lim.admit(lim.operation("GET", name)):
            done += 1

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(one(names[i % len(names)])) for i in range(200)]
        await settle()
        steps = round(seconds / 0.01)
        for _ in range(steps):
            await clock.advance(0.01)
        count = done
        for t in tasks:
            t.cancel()
    return count


# --- each limiter ---------------------------------------------------------------------------


async def test_operation_limit_caps_one_endpoint_and_not_the_others() -> None:
    """At 10/s per operation and 100/s global, one endpoint gets ~10 requests in a second,
    and two endpoints together get twice that: each runs at its own limit, in parallel."""
    clock = ManualClock()
    one = await admitted_within(limits(clock), ["/v1/events"], 1.0, clock)
    two = await admitted_within(limits(clock), ["/v1/events", "/v2/core/events"], 1.0, clock)
    assert 10 <= one <= 12  # 10/s plus the one-token burst
    assert 20 <= two <= 24


async def test_global_limit_caps_the_sum_over_operations() -> None:
    """With a 15/s global limit, four operations of 10/s each share 15 requests a second."""
    clock = ManualClock()
    lim = limits(clock, rate=15.0)
    ops = ["/v1/events", "/v2/core/events", "/v1/charges/{id}", "/v1/customers/{id}"]
    got = await admitted_within(lim, ops, 1.0, clock)
    assert 15 <= got <= 18


async def test_files_reads_count_against_the_files_limit_too() -> None:
    """A Files read takes a token of the Files read bucket (20/s) as well as its operation's:
    two Files operations at 50/s each still share 20 reads a second."""
    clock = ManualClock()
    lim = limits(clock, endpoint_rate=50.0, files_rate=20.0)
    got = await admitted_within(lim, ["/v1/files/{id}", "/v1/files"], 1.0, clock)
    assert 20 <= got <= 23


async def test_concurrency_caps_bound_requests_in_flight_globally_and_per_operation() -> None:
    """No more than the operation's cap of one endpoint, and no more than the global cap over
    all endpoints, are inside `admit` at once."""
    clock = ManualClock()
    lim = limits(clock, rate=1000.0, endpoint_rate=1000.0, concurrency=5, endpoint_concurrency=3)
    inside: dict[str, int] = {}
    peak = {"total": 0, "op": 0}
    release = asyncio.Event()

    async def one(name: str) -> None:
        async with lim.admit(lim.operation("GET", name)):
            inside[name] = inside.get(name, 0) + 1
            peak["total"] = max(peak["total"], sum(inside.values()))
            peak["op"] = max(peak["op"], max(inside.values()))
            await release.wait()
            inside[name] -= 1

    async with asyncio.TaskGroup() as tg:
        for name in ["/v1/events"] * 6 + ["/v2/core/events"] * 6:
            tg.create_task(one(name))
        for _ in range(30):
            await clock.advance(0.01)
        assert peak == {"total": 5, "op": 3}
        release.set()
    assert lim.global_slots.in_flight == 0


async def test_concurrency_cap_halves_once_per_second_and_creeps_back() -> None:
    """A concurrency 429 halves the cap (one burst of them halves it once), never below 1,
    and successes raise it back to the configured cap."""
    clock = ManualClock()
    cap = ConcurrencyCap(8, clock=clock, recovery=0.5)
    cap.on_limited()
    cap.on_limited()
    assert cap.limit == 4
    clock.now = 2.0
    cap.on_limited()
    assert cap.limit == 2
    for _ in range(10):
        cap.on_success()
    assert cap.limit == 8


# --- the reason header ----------------------------------------------------------------------


def _config(base: str, **kw: Any) -> StripeConfig:
    values: dict[str, Any] = {
        "api_key": Secret(KEY),
        "api_base": base,
        "max_retries": 3,
        "backoff_base": 0.001,
        "backoff_max": 0.01,
        "request_timeout": 5.0,
    }
    values.update(kw)
    return StripeConfig(**values)


async def _no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


@pytest.fixture
async def client(stub: StripeStub) -> AsyncIterator[StripeClient]:
    async with StripeClient(_config(stub.base), sleep=_no_sleep) as c:
        yield c


def _limited(reason: str | None) -> Reply:
    reply = error(
        429, "Request rate limit exceeded.", type="invalid_request_error", code="rate_limit"
    )
    if reason is not None:
        reply.headers["Stripe-Rate-Limited-Reason"] = reason
    return reply


def _state(c: StripeClient) -> dict[str, float]:
    lim = c.limits
    v1 = lim.operation("GET", "/v1/events")
    v2 = lim.operation("GET", "/v2/core/events")
    return {
        "global": lim.global_budget.rate,
        "v1": v1.bucket.rate,
        "v2": v2.bucket.rate,
        "global_slots": lim.global_slots.limit,
        "v1_slots": v1.slots.limit,
        "v2_slots": v2.slots.limit,
    }


@pytest.mark.parametrize(
    ("reason", "slowed"),
    [
        ("endpoint-rate", "v1"),
        ("global-rate", "global"),
        (None, "global"),  # no header: the cautious reading
        ("endpoint-concurrency", "v1_slots"),
        ("global-concurrency", "global_slots"),
        ("resource-specific", "v1"),
    ],
)
async def test_a_429_slows_only_the_limiter_its_reason_names(
    stub: StripeStub, client: StripeClient, reason: str | None, slowed: str
) -> None:
    """A 429 on GET /v1/events adapts the limiter `Stripe-Rate-Limited-Reason` names and no
    other: an endpoint-rate 429 leaves the global and /v2/core/events budgets untouched."""
    before = _state(client)
    stub.push(_limited(reason), OK)
    assert await client.request_json("GET", "/v1/events") == OK.json
    after = _state(client)
    assert after[slowed] < before[slowed]
    assert {k: v for k, v in after.items() if k != slowed} == {
        k: v for k, v in before.items() if k != slowed
    }
    assert len(stub.requests) == 2


async def test_endpoint_rate_429s_on_v1_leave_v2_at_full_speed(stub: StripeStub) -> None:
    """After v1 list requests keep getting endpoint-rate 429s, v2 list requests are still
    admitted at their full 25/s: one endpoint's trouble does not slow the process."""
    async with StripeClient(_config(stub.base), sleep=_no_sleep) as c:
        for _ in range(3):
            stub.push(_limited("endpoint-rate"), OK)
            await c.request_json("GET", "/v1/events")
            c.limits.operation("GET", "/v1/events").bucket._last_decrease = None  # next halves too
        v1 = c.limits.operation("GET", "/v1/events").bucket
        v2 = c.limits.operation("GET", "/v2/core/events").bucket
        assert v1.rate < 25.0 / 4
        assert v2.rate == 25.0
        assert c.budget.rate == c.budget.configured_rate == 25.0


# --- priorities -----------------------------------------------------------------------------


async def _queue(
    clock: ManualClock, acquire: Callable[[str, int], Awaitable[None]], order: list[str]
) -> None:
    async def one(name: str, priority: int) -> None:
        await acquire(name, priority)
        order.append(name)

    async with asyncio.TaskGroup() as tg:
        for i in range(3):
            tg.create_task(one(f"backfill{i}", Priority.BACKFILL))
        await settle()
        tg.create_task(one("sweep", Priority.SWEEP))
        await settle()
        tg.create_task(one("tail", Priority.TAIL))
        await settle()
        for _ in range(10):
            await clock.advance(0.1)


async def test_a_waiting_tail_poll_gets_the_next_token_before_waiting_backfill_requests() -> None:
    """With three backfill requests queued (one already sleeping for its token) and then a
    sweep and a tail poll, the tokens go to the tail poll, then the sweep, then the backfill
    requests in their arrival order."""
    clock = ManualClock()
    bucket = RateBudget(10.0, burst=1.0, clock=clock, sleep=clock.sleep, report=False)
    await bucket.acquire()  # empty: everyone below waits
    order: list[str] = []

    async def acquire(name: str, priority: int) -> None:
        await bucket.acquire(priority=priority)

    await _queue(clock, acquire, order)
    assert order == ["tail", "sweep", "backfill0", "backfill1", "backfill2"]


async def test_priorities_hold_through_every_limiter_of_a_request() -> None:
    """Through `Limits.admit` (operation bucket, global bucket, concurrency caps), a tail
    poll queued behind backfill requests on the same endpoint is admitted first."""
    clock = ManualClock()
    lim = limits(clock, rate=10.0, endpoint_rate=10.0)
    op = lim.operation("GET", "/v1/events")
    async with lim.admit(op):
        pass  # the one-token bursts are spent
    order: list[str] = []

    async def acquire(name: str, priority: int) -> None:
        async with lim.admit(op, priority):
            pass

    await _queue(clock, acquire, order)
    assert order[0] == "tail"
    assert order.index("sweep") < order.index("backfill0")


@pytest.mark.parametrize("reserved", [False, True])
async def test_a_reserved_share_keeps_sweeps_moving_behind_a_hydration_backlog(
    reserved: bool,
) -> None:
    """With 40 hydration requests queued on a 10/s rate, sweeps (a 50% share, behind
    hydration) get nothing for 3 s; with 20% of their share reserved ahead of hydration they
    get about that reserve, 1 request/s, and hydration keeps the rest."""
    clock = ManualClock()
    lim = limits(clock, rate=10.0, endpoint_rate=100.0)
    op = lim.operation("GET", "/v1/events")
    async with lim.admit(op):
        pass  # the one-token burst is spent
    share = lim.global_budget.share(0.5)
    if reserved:
        share.reserve(0.2, Priority.SWEEP_RESERVED)
    swept = hydrated = 0

    async def hydrate() -> None:
        nonlocal hydrated
        async with lim.admit(op, Priority.HYDRATE):
            hydrated += 1

    async def sweep() -> None:
        nonlocal swept
        while True:
            async with lim.admit(op, Priority.SWEEP, (share,)):
                swept += 1

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(hydrate()) for _ in range(40)]
        tasks.append(tg.create_task(sweep()))
        await settle()
        for _ in range(300):
            await clock.advance(0.01)
        for t in tasks:
            t.cancel()
    if reserved:
        assert 2 <= swept <= 4
        assert hydrated >= 25
    else:
        assert swept == 0
        assert hydrated >= 29


async def test_a_higher_priority_slot_waiter_is_served_first() -> None:
    """When a concurrency slot frees, the best waiting priority takes it, whatever came first."""
    cap = ConcurrencyCap(1)
    await cap.acquire(Priority.TAIL, 0)
    order: list[str] = []

    async def one(name: str, priority: int, seq: int) -> None:
        await cap.acquire(priority, seq)
        order.append(name)
        cap.release()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(one("backfill", Priority.BACKFILL, 1))
        tg.create_task(one("hydrate", Priority.HYDRATE, 2))
        await settle()
        cap.release()
    assert order == ["hydrate", "backfill"]


# --- lock_timeout ---------------------------------------------------------------------------


def _counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"{name}_total", labels) or 0.0


async def test_lock_timeout_429_is_retried_as_a_conflict_and_adapts_nothing(
    stub: StripeStub, client: StripeClient
) -> None:
    """A 429 with code lock_timeout is a lock conflict: retried with backoff, counted as a
    `conflict` retry and not as rate limited, and no limiter slows down."""
    before = _state(client)
    limited = _counter("ingestor_rate_limited")
    conflicts = _counter("ingestor_api_retries", reason="conflict")
    lock = error(429, "Object locked.", type="invalid_request_error", code="lock_timeout")
    stub.push(lock, OK)
    assert await client.request_json("GET", "/v1/events") == OK.json
    assert len(stub.requests) == 2
    assert _state(client) == before
    assert _counter("ingestor_rate_limited") == limited
    assert _counter("ingestor_api_retries", reason="conflict") == conflicts + 1


async def test_lock_timeout_past_the_retries_raises_a_lock_timeout_not_a_rate_limit(
    stub: StripeStub, client: StripeClient
) -> None:
    """Retries used up on lock conflicts end in StripeLockTimeout, which callers do not take
    for a rate limit."""
    stub.fallback = error(429, "Object locked.", type="invalid_request_error", code="lock_timeout")
    with pytest.raises(StripeLockTimeout) as info:
        await client.request_json("GET", "/v1/events")
    assert not isinstance(info.value, StripeRateLimited)
    assert info.value.code == "lock_timeout"
    assert len(stub.requests) == 4


async def test_has_room_needs_a_token_of_the_operation_and_of_the_global_rate() -> None:
    """Room for one more parallel request means neither its operation's rate nor the global
    one binds: spending `/v1/events`'s burst takes its room, not another operation's."""
    clock = ManualClock()
    lim = limits(clock, rate=100.0, endpoint_rate=10.0)
    events, charges = lim.operation("GET", "/v1/events"), lim.operation("GET", "/v1/charges")
    assert lim.has_room(events)
    async with lim.admit(events):  # the endpoint burst is one token (10/s / 10)
        pass
    assert not lim.has_room(events)
    assert lim.has_room(charges)
    await clock.advance(0.1)
    assert lim.has_room(events)
