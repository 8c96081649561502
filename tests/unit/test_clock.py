"""The one clock: system and loop clocks, scoped installation, and simulated time under looptime."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ingestor import clock
from ingestor.clock import LoopClock, SystemClock
from ingestor.ratelimit import RateBudget
from ingestor.sim import Simulator, load_scenario

EPOCH_MS = 1_790_000_000_000
ROOT = Path(__file__).resolve().parents[2]
# Converted by the pipeline rework (issue 9); remove each name once it reads ingestor.clock.
NOT_YET_CONVERTED: set[str] = set()


def test_system_clock_is_the_default_and_agrees_with_time() -> None:
    """Without a `use` block the clock is the machine's: wall and monotonic match `time`."""
    assert isinstance(clock.current(), SystemClock)
    before = time.time()
    wall = clock.wall()
    wall_ms = clock.wall_ms()
    after = time.time()
    assert before <= wall <= after
    assert int(before * 1000) <= wall_ms <= int(after * 1000) + 1
    m0 = time.monotonic()
    assert m0 <= clock.monotonic() <= time.monotonic()


def test_use_installs_for_the_block_and_restores_even_on_error() -> None:
    """`use` nests, and the previous clock is back after the block, also when it raised."""
    outer, inner = LoopClock(1), LoopClock(2)
    original = clock.current()
    with clock.use(outer):
        assert clock.current() is outer

        def fails_inside() -> None:
            with clock.use(inner):
                assert clock.current() is inner
                raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            fails_inside()
        assert clock.current() is outer
    assert clock.current() is original


@pytest.mark.looptime
async def test_under_looptime_monotonic_and_wall_advance_by_exactly_the_slept_time() -> None:
    """With a LoopClock on a looptime loop, both clocks move by the simulated sleep, to the
    millisecond, while almost no real time passes."""
    real = time.perf_counter()
    with clock.use(LoopClock(EPOCH_MS)):
        m0, w0, ws0 = clock.monotonic(), clock.wall_ms(), clock.wall()
        assert w0 == EPOCH_MS + round(m0 * 1000)
        await asyncio.sleep(3600.3)
        assert clock.monotonic() - m0 == pytest.approx(3600.3, abs=1e-9)
        assert clock.wall_ms() - w0 == 3_600_300
        assert clock.wall() - ws0 == pytest.approx(3600.3, abs=1e-6)
        await asyncio.sleep(0.001)
        assert clock.wall_ms() - w0 == 3_600_301
    assert time.perf_counter() - real < 5  # an hour simulated, not waited


@pytest.fixture
async def loop_clock() -> AsyncIterator[LoopClock]:
    # Entered in the fixture's set-up and left in its tear-down, which pytest-asyncio runs in
    # different contexts: a ContextVar-based `use` would fail here at tear-down.
    with clock.use(LoopClock(EPOCH_MS)) as installed:
        yield installed
    assert isinstance(clock.current(), SystemClock)


@pytest.mark.looptime
async def test_a_clock_installed_by_an_async_fixture_holds_for_the_test(
    loop_clock: LoopClock,
) -> None:
    """A LoopClock installed by a fixture is the clock the test and its tasks read."""
    assert clock.current() is loop_clock
    start = clock.wall_ms()

    async def later() -> int:
        await asyncio.sleep(90)
        return clock.wall_ms()

    assert await asyncio.create_task(later()) - start == 90_000


@pytest.mark.looptime
async def test_rate_budget_refills_in_simulated_time() -> None:
    """A 10 req/s budget with its default clock and sleep serves 51 acquisitions in exactly
    5 simulated seconds (one in the burst, then one per 0.1 s) under a LoopClock."""
    real = time.perf_counter()
    with clock.use(LoopClock(EPOCH_MS)):
        budget = RateBudget(10.0, burst=1.0, report=False)
        start = clock.monotonic()
        for _ in range(51):
            await budget.acquire()
        assert clock.monotonic() - start == pytest.approx(5.0, abs=1e-3)
    assert time.perf_counter() - real < 5


async def test_loop_clock_reads_its_loop_from_a_worker_thread() -> None:
    """Code off the loop (a worker thread) reads the loop the clock last saw, not an error;
    before any loop was seen it refuses with a clear error."""
    fresh = LoopClock(EPOCH_MS)
    with pytest.raises(RuntimeError, match="outside a running event loop"):
        await asyncio.to_thread(fresh.monotonic)
    seen = fresh.monotonic()
    assert await asyncio.to_thread(fresh.monotonic) >= seen


@pytest.mark.looptime
async def test_simulator_visibility_follows_the_installed_clock() -> None:
    """A Simulator built under a LoopClock takes its time from it: an event added 30 s late
    appears in the simulator's truth only once 30 simulated seconds have been slept."""
    scenario = dataclasses.replace(
        load_scenario(None),
        start_time=EPOCH_MS / 1000,
        history_events=10,
        history_bursts=0,
        accounts=(),
        live_rate=0.0,
        late_share=0.0,
    )
    with clock.use(LoopClock(EPOCH_MS)):
        sim = Simulator(scenario, seed=1)
        assert sim.now_ms() == clock.wall_ms()
        (late,) = sim.add_events(1, lag_seconds=30)
        await asyncio.sleep(29.9)
        assert late not in {row["id"] for row in sim.truth()}
        await asyncio.sleep(0.2)
        assert late in {row["id"] for row in sim.truth()}
        assert sim.now_ms() == clock.wall_ms()


def test_no_module_reads_the_machine_clock_directly() -> None:
    """Every module reads time through ingestor.clock, so a simulation can replace it."""
    pattern = re.compile(r"\btime\.(time|monotonic|time_ns|monotonic_ns|perf_counter)\(")
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "ingestor").rglob("*.py"))
        if path.name != "clock.py"
        and path.name not in NOT_YET_CONVERTED
        and pattern.search(path.read_text())
    ]
    assert offenders == []
