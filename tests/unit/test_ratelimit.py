"""RateBudget: token bucket timing, FIFO fairness, 429 decrease and recovery, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from ingestor.metrics import REGISTRY
from ingestor.ratelimit import RateBudget


class FakeClock:
    """A clock that only moves when someone sleeps on it; records every sleep."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def budget(rate: float, clock: FakeClock, **kw: float) -> RateBudget:
    return RateBudget(rate, clock=clock, sleep=clock.sleep, **kw)  # type: ignore[arg-type]  # any float kw


async def test_burst_is_free_then_each_token_waits_exactly_one_interval() -> None:
    clock = FakeClock()
    b = budget(10.0, clock, burst=2.0)
    await b.acquire()
    await b.acquire()
    assert clock.sleeps == []
    await b.acquire()
    assert clock.sleeps == [pytest.approx(0.1)]
    await b.acquire()
    assert clock.sleeps == [pytest.approx(0.1), pytest.approx(0.1)]


async def test_default_burst_is_a_tenth_of_the_rate_with_a_floor_of_one() -> None:
    assert RateBudget(100.0).burst == 10.0
    assert RateBudget(25.0).burst == 2.5
    assert RateBudget(3.0).burst == 1.0


async def test_idle_time_refills_up_to_the_burst_only() -> None:
    clock = FakeClock()
    b = budget(10.0, clock, burst=1.0)
    await b.acquire()
    clock.now += 60.0  # a long idle period must not bank 600 tokens
    await b.acquire()
    assert clock.sleeps == []
    await b.acquire()
    assert clock.sleeps == [pytest.approx(0.1)]


async def test_waiters_are_served_in_arrival_order() -> None:
    clock = FakeClock()
    b = budget(1.0, clock, burst=1.0)
    await b.acquire()  # empty the bucket so everyone below has to wait
    order: list[int] = []

    async def take(i: int, cost: float) -> None:
        await b.acquire(cost)
        order.append(i)

    # The expensive first waiter must not be overtaken by the cheap ones behind it.
    async with asyncio.TaskGroup() as tg:
        for i, cost in enumerate([1.0, 0.1, 0.1, 1.0, 0.1]):
            tg.create_task(take(i, cost))
            await asyncio.sleep(0)
    assert order == [0, 1, 2, 3, 4]
    assert clock.sleeps[0] == pytest.approx(1.0)


async def test_cancelled_waiter_does_not_block_the_queue() -> None:
    clock = FakeClock()
    gate = asyncio.Event()

    async def blocking_sleep(seconds: float) -> None:
        clock.sleeps.append(seconds)
        await gate.wait()
        clock.now += seconds

    b = RateBudget(1.0, burst=1.0, clock=clock, sleep=blocking_sleep)
    await b.acquire()
    first = asyncio.create_task(b.acquire())
    await asyncio.sleep(0)
    second = asyncio.create_task(b.acquire())
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.set()
    await second
    assert second.done()
    assert second.exception() is None


async def test_429_halves_the_rate_once_per_second_down_to_the_floor() -> None:
    clock = FakeClock()
    b = budget(100.0, clock, min_rate=20.0)
    b.on_rate_limited()
    assert b.rate == 50.0
    b.on_rate_limited()  # same one-second window: a burst of 429s halves once
    clock.now += 0.5
    b.on_rate_limited()
    assert b.rate == 50.0
    clock.now += 1.0
    b.on_rate_limited()
    assert b.rate == 25.0
    clock.now += 1.0
    b.on_rate_limited()
    assert b.rate == 20.0
    assert REGISTRY.get_sample_value("ingestor_rate_budget_requests_per_second") == 20.0


async def test_429_drops_saved_burst_so_the_next_request_waits() -> None:
    clock = FakeClock()
    b = budget(10.0, clock, burst=5.0)
    b.on_rate_limited()
    await b.acquire()
    assert clock.sleeps == [pytest.approx(1 / 5.0)]


async def test_success_recovers_additively_to_the_configured_rate_and_no_further() -> None:
    clock = FakeClock()
    b = budget(100.0, clock, recovery=0.01)
    b.on_rate_limited()
    assert b.rate == 50.0
    b.on_success()
    assert b.rate == pytest.approx(51.0)
    for _ in range(100):
        b.on_success()
    assert b.rate == 100.0
    assert REGISTRY.get_sample_value("ingestor_rate_budget_requests_per_second") == 100.0


async def test_share_caps_a_traffic_class_at_a_fraction_and_leaves_the_gauge_alone() -> None:
    clock = FakeClock()
    main = budget(100.0, clock)
    sweep = main.share(0.1)
    assert sweep.rate == pytest.approx(10.0)
    sweep.on_rate_limited()
    assert REGISTRY.get_sample_value("ingestor_rate_budget_requests_per_second") == 100.0
    with pytest.raises(ValueError, match="share"):
        main.share(0.0)


async def test_cost_above_the_burst_is_taken_as_debt_instead_of_waiting_forever() -> None:
    clock = FakeClock()
    b = budget(1.0, clock, burst=1.0)
    await b.acquire(3.0)
    await b.acquire()
    assert sum(clock.sleeps) == pytest.approx(3.0)


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RateBudget(0.0)


async def test_has_room_only_while_a_token_is_saved_up_and_nobody_waits() -> None:
    """A full bucket has room; spent, it has none until a token refills; a queued waiter
    takes the room away even when the clock says a token is due."""
    clock = FakeClock()
    b = budget(10.0, clock, burst=2.0)
    assert b.has_room()
    await b.acquire()
    await b.acquire()
    assert not b.has_room()
    clock.now += 0.1
    assert b.has_room()
    await b.acquire()
    waiter = asyncio.create_task(b.acquire())
    await asyncio.sleep(0)  # queued: it holds the lock while it sleeps for its token
    assert not b.has_room()
    await waiter
