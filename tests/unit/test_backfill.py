"""Backfill slicing: exact cover, dense splits, oldest-first emission, bounded buffering."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from ingestor.backfill import Backfiller, Slice, SlicePlan


@dataclass(frozen=True, slots=True)
class Item:
    id: str
    created_ms: int


def history(seed: int, n: int, span_ms: int, bursts: list[tuple[int, int]]) -> list[Item]:
    """n events spread over span_ms (whole seconds), plus (second, count) same-second bursts."""
    rng = random.Random(seed)
    items = [Item(f"e{i}", rng.randrange(0, span_ms) // 1000 * 1000) for i in range(n)]
    for b, (second, count) in enumerate(bursts):
        items += [Item(f"b{b}-{i}", second * 1000) for i in range(count)]
    return items


def fake_fetch(
    items: list[Item], page_size: int, calls: list[tuple[int, int]]
) -> Callable[[int, int], AsyncIterator[list[Item]]]:
    """Pages newest first over a fixed history, recording each (lo, hi) window asked for."""
    ordered = sorted(items, key=lambda i: (i.created_ms, i.id), reverse=True)

    async def fetch(lo: int, hi: int) -> AsyncIterator[list[Item]]:
        calls.append((lo, hi))
        window = [i for i in ordered if lo <= i.created_ms < hi]
        for start in range(0, len(window), page_size):
            await asyncio.sleep(0)
            yield window[start : start + page_size]

    return fetch


def test_plan_covers_the_range_exactly_with_aligned_half_open_slices() -> None:
    plan = SlicePlan[Item].build(1_500, 100_000, 7_000, 1000)
    assert plan.slices[0].lo_ms == 1_500
    assert plan.slices[-1].hi_ms == 100_000
    for a, b in zip(plan.slices, plan.slices[1:], strict=False):
        assert a.hi_ms == b.lo_ms
        assert a.hi_ms % 1000 == 0


def test_split_keeps_the_cover_gap_free_and_ordered() -> None:
    plan = SlicePlan[Item].build(0, 60_000, 60_000, 1000)
    s = plan.slices[0]
    new = plan.split(s, 37_000, 4)
    assert s.lo_ms == 37_000
    bounds = [(x.lo_ms, x.hi_ms) for x in plan.slices]
    assert bounds[0][0] == 0
    assert bounds[-1][1] == 60_000
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    assert len(new) == 4
    assert all(x.lo_ms % 1000 == 0 for x in new)


async def run_backfill(
    items: list[Item],
    *,
    slice_ms: int,
    page_size: int,
    concurrency: int,
    buffer: int,
    eager_split: bool = False,
) -> tuple[list[Item], list[tuple[int, int]], int, Backfiller[Item]]:
    span_hi = max(i.created_ms for i in items) + 1000
    plan = SlicePlan[Item].build(0, span_hi, slice_ms, 1000)
    calls: list[tuple[int, int]] = []
    emitted: list[Item] = []
    peak = 0

    async def emit(s: Slice[Item]) -> None:
        nonlocal peak
        assert s.events is not None
        emitted.extend(s.events)
        peak = max(peak, bf.plan.buffered_events())

    bf = Backfiller(
        plan,
        fake_fetch(items, page_size, calls),
        emit,
        concurrency=concurrency,
        max_buffered_events=buffer,
        split_after_pages=2,
        page_size=page_size,
        eager_split=eager_split,
    )
    await bf.run()
    return emitted, calls, peak, bf


def collecting(
    plan: SlicePlan[Item],
    fetch: Callable[[int, int], AsyncIterator[list[Item]]],
    **options: Any,
) -> tuple[Backfiller[Item], list[Item]]:
    """A Backfiller over `plan` and `fetch` (room for 10,000 buffered events unless given)
    whose emitted events collect, in emission order, in the returned list."""
    emitted: list[Item] = []

    async def emit(s: Slice[Item]) -> None:
        emitted.extend(s.events or [])

    options.setdefault("max_buffered_events", 10_000)
    return Backfiller(plan, fetch, emit, **options), emitted


async def test_every_event_is_emitted_once_oldest_first_through_dense_splits() -> None:
    items = history(1, 3000, 3600_000, bursts=[(600, 250), (1800, 40), (3599, 120)])
    emitted, _, _, bf = await run_backfill(
        items, slice_ms=900_000, page_size=20, concurrency=6, buffer=10_000
    )
    assert sorted(i.id for i in emitted) == sorted(i.id for i in items)
    assert len(emitted) == len({i.id for i in emitted})
    created = [i.created_ms for i in emitted]
    assert created == sorted(created)
    assert bf.stats.splits > 0, "dense slices should have been split"


async def test_events_exactly_on_slice_boundaries_are_neither_dropped_nor_doubled() -> None:
    # Every event sits on a slice boundary second.
    items = [Item(f"x{k}-{j}", k * 10_000) for k in range(50) for j in range(3)]
    emitted, _, _, _ = await run_backfill(
        items, slice_ms=10_000, page_size=2, concurrency=4, buffer=10_000
    )
    assert sorted(i.id for i in emitted) == sorted(i.id for i in items)
    assert len(emitted) == len(items)


async def test_buffered_events_stay_near_the_bound() -> None:
    items = history(2, 5000, 7200_000, bursts=[])
    emitted, _, peak, _ = await run_backfill(
        items, slice_ms=60_000, page_size=10, concurrency=8, buffer=300
    )
    assert len(emitted) == len(items)
    # The bound gates new slices; slices already in flight may finish on top of it.
    assert peak <= 300 + 8 * 2 * 10 * 4


async def test_a_single_dense_second_is_read_through_without_splitting_forever() -> None:
    items = [Item(f"s{i}", 5000) for i in range(500)]
    emitted, calls, _, _ = await run_backfill(
        items, slice_ms=60_000, page_size=25, concurrency=3, buffer=10_000
    )
    assert len(emitted) == 500
    assert len(calls) < 20


async def test_a_slice_with_little_left_is_read_through_instead_of_split() -> None:
    """A slice whose unread rest holds less than `split_after_pages` pages is not split:
    every part would end in a partial page, one more request each; a large rest still is."""
    # Uniform: one slice of 100 s with 5 events/s; 2 full pages (40) read, ~460 left: split.
    dense = [Item(f"d{i}", (i // 5) * 1000) for i in range(500)]
    _, _, _, big = await run_backfill(
        dense, slice_ms=200_000, page_size=20, concurrency=2, buffer=10_000
    )
    assert big.stats.splits > 0
    # 55 events: after 2 full pages only ~15 are left, less than 2 pages: read through.
    sparse = [Item(f"s{i}", i * 1000) for i in range(55)]
    _, calls, _, small = await run_backfill(
        sparse, slice_ms=200_000, page_size=20, concurrency=2, buffer=10_000
    )
    assert small.stats.splits == 0
    assert small.stats.pages == 3  # ceil(55 / 20): no partial page beyond the last one
    assert len(calls) == 1


async def test_an_eager_probe_reads_a_quiet_range_in_one_request() -> None:
    """One slice over a range with less than a page: one request, not one per slice."""
    items = [Item(f"q{i}", i * 30_000) for i in range(7)]
    emitted, calls, _, bf = await run_backfill(
        items, slice_ms=10_000_000, page_size=20, concurrency=12, buffer=10_000, eager_split=True
    )
    assert [i.id for i in emitted] == [f"q{i}" for i in range(7)]
    assert len(calls) == 1
    assert bf.stats.splits == 0


@pytest.mark.parametrize(("eager", "first_walk_pages"), [(True, 1), (False, 2)])
async def test_an_eager_probe_fans_a_dense_range_out_after_its_first_page(
    eager: bool, first_walk_pages: int
) -> None:
    """A dense single-slice range splits after page one with `eager_split` (after
    `split_after_pages` without), keeps that page, and still emits every event once, oldest
    first."""
    items = history(3, 2000, 3600_000, bursts=[(900, 60)])
    pages: list[int] = []
    inner = fake_fetch(items, 20, [])

    async def fetch(lo: int, hi: int) -> AsyncIterator[list[Item]]:
        pages.append(0)
        walk = len(pages) - 1
        async for page in inner(lo, hi):
            pages[walk] += 1
            yield page

    bf, emitted = collecting(
        SlicePlan[Item].build(0, 3600_000, 10_000_000, 1000),
        fetch,
        concurrency=6,
        split_after_pages=2,
        page_size=20,
        eager_split=eager,
    )
    await bf.run()
    assert pages[0] == first_walk_pages
    assert bf.stats.splits > 0
    assert sorted(i.id for i in emitted) == sorted(i.id for i in items)
    assert len(emitted) == len(items)
    created = [i.created_ms for i in emitted]
    assert created == sorted(created)


async def test_a_fetch_failing_while_an_emit_waits_loses_no_fetched_slice() -> None:
    """Slices already fetched, but not emitted when another slice's fetch fails (the emit is
    waiting on backpressure then), are emitted by the next run(), once each, in order."""
    items = [Item(f"e{n}", n * 1000) for n in range(3)]  # one per slice
    failed = asyncio.Event()
    head_waiting = asyncio.Event()

    async def fetch(lo: int, hi: int) -> AsyncIterator[list[Item]]:
        if lo == 2000 and not failed.is_set():
            # Fail once both older slices are fetched and the head's emit waits.
            await head_waiting.wait()
            failed.set()
            raise RuntimeError("list failed")
        await asyncio.sleep(0)
        yield [i for i in items if lo <= i.created_ms < hi]

    emitted: list[str] = []
    backpressure = asyncio.Event()

    async def emit(s: Slice[Item]) -> None:
        if not backpressure.is_set():
            head_waiting.set()
            await backpressure.wait()  # all or nothing: cancelled here, nothing was emitted
        emitted.extend(i.id for i in s.events or [])

    bf = Backfiller(
        SlicePlan[Item].build(0, 3000, 1000, 1000),
        fetch,
        emit,
        concurrency=3,
        max_buffered_events=100,
    )
    with pytest.raises(ExceptionGroup):
        await bf.run()
    assert emitted == []
    backpressure.set()
    await bf.run()
    assert emitted == ["e0", "e1", "e2"]


@pytest.mark.looptime
@pytest.mark.parametrize("room", [True, False])
async def test_idle_cursors_take_over_the_last_slices_only_while_the_rate_has_room(
    room: bool,
) -> None:
    """Two slices of 20 pages and 8 cursors: while the rate budget has room, the rest of each
    slice is split over the idle cursors after its first page, so the walk takes a fraction
    of 20 round trips; while the rate binds (`room()` False), nothing is split and no
    request is added. Either way every event is emitted once, oldest first."""
    items = [Item(f"u{i}", (i // 2) * 1000) for i in range(400)]  # 2 events/s over 200 s
    inner = fake_fetch(items, 10, [])
    requests = 0

    async def fetch(lo: int, hi: int) -> AsyncIterator[list[Item]]:
        nonlocal requests
        async for page in inner(lo, hi):
            requests += 1
            await asyncio.sleep(0.1)  # one round trip per page
            yield page

    bf, emitted = collecting(
        SlicePlan[Item].build(0, 200_000, 100_000, 1000),
        fetch,
        concurrency=8,
        split_after_pages=100,  # never dense: only the idle-cursor rule may split
        page_size=10,
        room=lambda: room,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    await bf.run()
    took = loop.time() - started
    assert [i.id for i in emitted] == [i.id for i in sorted(items, key=lambda i: i.created_ms)]
    if room:
        assert bf.stats.splits >= 2
        assert took < 0.6 * 2.0, took
        assert requests <= 40 + 8 + 2  # at most a partial page more per part
    else:
        assert bf.stats.splits == 0
        assert requests == 40
        assert took >= 2.0
