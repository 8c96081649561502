"""Tail polling: trailing-window reads, the switch to sliced reads when busy, streamed sweeps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
import structlog

from ingestor import metrics
from ingestor.config import TailConfig
from ingestor.events import Event, Stream
from ingestor.limits import Priority
from ingestor.ratelimit import RateBudget
from ingestor.stream import StreamState
from ingestor.tail import SLOW_SWEEPS_BEFORE_CUT, SWEEP_HYDRATION, Tail

NOW = 1_000_000_000


def written(rt: StreamState) -> dict[bytes, bytes]:
    """The records a snapshot of `rt` leaves in the state topic (its head and chunks)."""
    return {k: v for k, v in rt.snapshot().items() if v is not None}


def ev(i: int, created_ms: int) -> Event:
    return Event(f"evt_{i}", "charge.updated", "v1", None, created_ms, False, None, "ch", {})


class Fake:
    """A scripted source: each read yields the queued pages and records its window; accepted
    events are marked in a real StreamState, as the pipeline's queueing does."""

    def __init__(self) -> None:
        self.pages: list[list[list[Event]]] = []
        self.windows: list[tuple[int, int | None, int]] = []
        self.accepted: list[tuple[int, int | None]] = []
        self.priorities: list[int] = []
        self.gap_results: list[tuple[int, int] | None] = []
        self.gap_calls = 0
        self.rt = StreamState(Stream("v1", None))
        self.rt.set_tail_start(NOW - 3_600_000)
        self.rt.advance_watermark(NOW - 60_000)
        self.rt.set_sweep_lo(NOW - 600_000)
        self.now = NOW

    async def read(
        self, lo: int, hi: int | None, extra: Sequence[RateBudget], priority: Priority
    ) -> AsyncIterator[list[Event]]:
        self.windows.append((lo, hi, len(extra)))
        for page in self.pages.pop(0) if self.pages else []:
            yield page

    async def accept(self, events: list[Event], newest: int | None, priority: int = 0) -> int:
        self.accepted.append((len(events), newest))
        if events:
            self.priorities.append(priority)
        fresh, _ = self.rt.claim(events)
        self.rt.mark(fresh)
        if newest is not None:
            self.rt.advance_watermark(newest)
        return len(fresh)

    async def read_gap(self) -> tuple[int, int] | None:
        self.gap_calls += 1
        return self.gap_results.pop(0) if self.gap_results else None

    def tail(self) -> Tail:
        cfg = TailConfig(overlap_seconds=5, sweep_window_seconds=600)
        return Tail(
            self.rt,
            self.read,
            self.accept,
            cfg,
            sweep_budget=RateBudget(10),
            page_size=2,
            clock_ms=lambda: self.now,
            read_gap=self.read_gap,
            busy_pages=3,
        )


def merged(windows: list[tuple[int, int | None, int]]) -> list[tuple[int, int | None, int]]:
    """The windows read, contiguous ones (a sweep's spans of one window each) joined."""
    out: list[tuple[int, int | None, int]] = []
    for lo, hi, extra in windows:
        if out and out[-1][1] == lo and out[-1][2] == extra:
            out[-1] = (out[-1][0], hi, extra)
        else:
            out.append((lo, hi, extra))
    return out


def pages(n: int, start: int = 0) -> list[list[Event]]:
    return [[ev(start + 2 * i, NOW - i), ev(start + 2 * i + 1, NOW - i - 1)] for i in range(n)]


async def test_a_poll_rereads_the_overlap_behind_the_watermark_and_reports_the_newest() -> None:
    f = Fake()
    f.pages = [pages(2)]
    t = f.tail()
    assert await t.poll() == 4
    assert f.windows == [(NOW - 60_000 - 5_000, None, 0)]
    assert f.accepted == [(4, NOW)]


async def test_a_busy_poll_hands_the_next_window_to_the_sliced_reader() -> None:
    f = Fake()
    f.pages = [pages(3), pages(1)]
    f.gap_results = [(500, 12), (7, 1)]
    t = f.tail()
    await t.poll()  # 3 pages: busy
    assert await t.poll() == 500  # sliced
    assert await t.poll() == 7  # still busy after 12 pages; then quiet
    assert f.gap_calls == 2
    await t.poll()  # sequential again
    assert len(f.windows) == 2


async def test_a_gap_too_small_to_slice_falls_back_to_the_sequential_poll() -> None:
    f = Fake()
    f.pages = [pages(3), pages(1, 100)]
    f.gap_results = [None]
    t = f.tail()
    await t.poll()
    assert await t.poll() == 2
    assert f.gap_calls == 1
    assert len(f.windows) == 2


async def test_a_sweep_reads_behind_the_poll_window_under_its_budget_page_by_page() -> None:
    f = Fake()
    f.rt.advance_watermark(NOW - 1_000)
    f.pages = [pages(3)]
    t = f.tail()
    assert await t.sweep() == (6, NOW)
    assert f.windows == [(NOW - 600_000, NOW - 1_000 - 5_000, 1)]
    assert f.accepted == [(2, None), (2, None), (2, None)]


async def test_a_sweeps_events_hydrate_ahead_of_a_polls() -> None:
    """A poll's new events hydrate at hydration priority and a sweep's (late ones) at the
    sweep's own, better one: a sweep page never waits behind a catch-up's backlog."""
    f = Fake()
    f.rt.advance_watermark(NOW - 1_000)
    f.pages = [pages(1), pages(1, 100)]
    t = f.tail()
    await t.poll()
    await t.sweep()
    assert f.priorities == [Priority.HYDRATE, SWEEP_HYDRATION]
    assert SWEEP_HYDRATION < Priority.HYDRATE


async def test_run_once_polls_until_caught_up_then_sweeps_once() -> None:
    f = Fake()
    f.pages = [pages(2), pages(1, 100), [[ev(200, NOW)]], []]
    t = f.tail()
    await t.run_once()
    assert t.polls == 3  # 4 new, 2 new, then 1 new (< a page): caught up
    assert t.sweeps == 1
    # The sweep covered what the last one owed up to where this run began, at the whole
    # budget, and left the next one's bound a window behind this run's start.
    assert f.windows[-1] == (NOW - 600_000, NOW - 60_000 - 5_000, 0)
    assert f.rt.sweep_lo_ms == NOW - 600_000


async def test_a_sweep_starts_where_the_last_left_its_bound_however_long_it_took() -> None:
    """Finding 2: the next sweep's lower bound is the previous sweep's start less the window,
    kept in the stream state, not `now - window`: a sweep (or a stop) longer than the window
    cannot skip a late event."""
    f = Fake()
    f.rt.advance_watermark(NOW - 1_000)
    t = f.tail()
    _, started = await t.sweep()
    await t._finish_sweep(started)
    assert f.rt.sweep_lo_ms == NOW - 600_000
    f.now = NOW + 3_600_000  # the process was stopped for an hour
    owed = f.rt.owe_restart_sweep(5_000, 600_000)
    f.rt.advance_watermark(NOW + 3_600_000)  # the restart's catch-up
    await t.restart_sweep(owed)
    assert f.windows[-1] == (NOW - 600_000, NOW - 1_000 - 5_000, 1)


async def test_a_restart_sweep_cut_short_is_owed_to_the_next_restart() -> None:
    """Seed 452: a process stopped while its restart sweep ran, after its catch-up had moved
    the watermark hours on, left the next restart nothing to tell where that sweep began:
    its sweep reached back only twice the window from the new watermark, and the late events
    of the first stop were lost. The owed range is kept in the head until a restart sweep
    finishes, and every later restart sweeps it too."""
    f = Fake()
    f.rt.advance_watermark(NOW - 1_000)
    f.rt.set_read_through(NOW)
    first = f.rt.owe_restart_sweep(5_000, 600_000)
    assert first == [(NOW - 600_000, NOW - 6_000)]
    # The catch-up read 2 hours of history, then the process stopped mid-sweep.
    f.rt.advance_watermark(NOW + 7_200_000)
    f.rt.set_read_through(NOW + 7_200_000)
    f.rt.settle(NOW + 7_200_000, 600_000)  # what the catch-up read settled (run's catch_up)
    # What the state topic holds; the next process restores from it.
    f.rt = StreamState.restore(written(f.rt))[f.rt.stream]
    assert f.rt.owed == first
    f.now = NOW + 9_000_000
    t = f.tail()
    owed = f.rt.owe_restart_sweep(5_000, 600_000)
    assert owed == [(NOW - 600_000, NOW - 6_000), (NOW + 7_200_000 - 600_000, NOW + 7_195_000)]
    # Pruning keeps the owed ranges' ids until they are swept...
    assert f.rt.prune_horizon(5_000, 600_000) < NOW - 600_000
    await t.restart_sweep(owed)
    assert [w[:2] for w in merged(f.windows)] == owed
    await t._finish_sweep(f.now, restart=True)
    # ...which settles them, and moves the next sweep's bound over what it read.
    assert f.rt.owed == []
    assert f.rt.sweep_lo_ms == NOW + 7_195_000
    assert StreamState.restore(written(f.rt))[f.rt.stream].owed == []


async def test_while_a_sweep_runs_its_range_survives_pruning() -> None:
    """Finding 1: an id at or above a running read's lower bound never leaves the seen window,
    however far the polls have moved on."""
    f = Fake()
    old = [ev(900 + i, NOW - 500_000 + i * 1000) for i in range(5)]
    f.rt.mark(old)
    seen_during_sweep: list[int] = []

    async def read(
        lo: int, hi: int | None, extra: Sequence[RateBudget], priority: Priority
    ) -> AsyncIterator[list[Event]]:
        # Meanwhile polls advance the watermark by 20 minutes and the pipeline prunes.
        f.rt.advance_watermark(NOW + 1_200_000)
        f.rt.prune(f.rt.prune_horizon(5_000, 600_000))
        seen_during_sweep.append(sum(1 for e in old if not f.rt.is_new(e)))
        yield list(reversed(old))

    t = f.tail()
    t._read = read
    assert await t.sweep() == (0, NOW)
    assert seen_during_sweep == [5]


async def test_a_late_event_a_slow_poll_listed_too_early_is_swept_after_it() -> None:
    """Seed 303: a poll lists the newest page at once, before a late event in it became
    visible, then takes longer than the sweep window to queue its window (thin events
    hydrated under a tight budget). The sweeps meanwhile end below the poll window; their
    next bound follows the time the stream is read through, not the wall clock, so the
    first sweep after that poll still reads the late event."""
    f = Fake()
    f.rt.set_read_through(NOW - 60_000)  # the last poll that went through
    late = ev(999, NOW - 8_000)  # created 8 s before the poll, visible ~10 s late
    newest = [ev(1000 + i, NOW - 1_000 - i * 100) for i in range(5)]
    sweeps: list[tuple[int, int | None]] = []
    t = f.tail()

    async def read(
        lo: int, hi: int | None, extra: Sequence[RateBudget], priority: Priority
    ) -> AsyncIterator[list[Event]]:
        if hi is None:  # the poll: its first page is listed now, `late` not yet among it
            page = list(newest)
            for minute in range(1, 13):  # 12 minutes to queue the rest; sweeps go on
                f.now = NOW + minute * 60_000
                _, started = await t.sweep()
                await t._finish_sweep(started)
            yield page
            return
        sweeps.append((lo, hi))
        if lo <= late.created_ms < hi:
            yield [late]

    t._read = read
    assert await t.poll() == len(newest)
    assert f.rt.read_through_ms == NOW
    # While the poll ran, the sweeps could not reach its window.
    assert all(hi is not None and hi <= NOW - 60_000 - 5_000 for _, hi in sweeps)
    f.now = NOW + 13 * 60_000
    new, _ = await t.sweep()
    assert new == 1
    assert f.rt.has_seen(late.id, late.created_ms)
    # Only that sweep, which read it after it was visible, moved the bound over it.
    assert f.rt.sweep_lo_ms == NOW - 1_000 - 5_000


async def test_a_sweep_behind_polls_that_lag_two_windows_still_starts_at_its_bound() -> None:
    """Seed 303 over a day: thin events outran hydration, the polls lagged the wall clock by
    more than twice the window, and each sweep was cut at twice the window below the poll
    window, its bound then moved past the cut: late events there were never read (1,539 lost
    in 24 h). A sweep starts at its bound, however far the polls have moved on."""
    f = Fake()
    f.rt.advance_watermark(NOW + 3_000_000)  # polls 50 minutes past the sweep's bound
    t = f.tail()
    await t.sweep()
    assert merged(f.windows) == [(NOW - 600_000, NOW + 3_000_000 - 5_000, 1)]


async def test_sweeps_slower_than_their_window_are_cut_to_twice_it_and_each_cut_reported() -> None:
    """At event rates where sweeps read created time slower than it passes (their budget
    share too small), they would each start further back without bound: the next one covers
    twice the window, and the skipped range is counted and logged as an error, never
    silently. Fewer slow sweeps in a row, such as a restart's and one through a 429 storm,
    are not cut: they catch up."""
    f = Fake()
    f.rt.advance_watermark(NOW + 3_000_000)
    t = f.tail()
    t.slow_sweeps = SLOW_SWEEPS_BEFORE_CUT - 1
    await t.sweep()
    assert merged(f.windows) == [(NOW - 600_000, NOW + 3_000_000 - 5_000, 1)]
    assert t.slow_sweeps == 0  # that one was quick
    f.windows.clear()
    # The last sweeps read created time slower than it passes, and took over the window.
    t.sweep_seconds, t.slow_sweeps = 1_300.0, SLOW_SWEEPS_BEFORE_CUT
    skipped = metrics.SWEEP_SKIPPED.labels(stream=f.rt.stream.key)
    before = skipped._value.get()
    with structlog.testing.capture_logs() as logs:
        await t.sweep()
    hi = NOW + 3_000_000 - 5_000
    assert merged(f.windows) == [(hi - 1_200_000, hi, 1)]
    assert skipped._value.get() - before == (hi - 1_200_000 - (NOW - 600_000)) / 1000
    [line] = [e for e in logs if e["log_level"] == "error"]
    assert line["skipped_from"] == NOW - 600_000
    assert line["skipped_to"] == hi - 1_200_000
    # After a sweep within its window the next is not cut.
    assert t.slow_sweeps == 0
    await t.sweep()
    assert merged(f.windows)[-1] == (NOW - 600_000, hi, 1)


async def test_a_restart_sweep_cut_short_leaves_only_its_unread_rest_owed() -> None:
    """Seed 300: after an hour's stop a crash every few minutes cut each restart sweep short,
    and each restart owed all of it again plus its own range, so the state held ever more
    ids. A sweep reads its range a window at a time, oldest first, and records after each
    what it settled: the next restart owes only the rest."""
    f = Fake()
    f.rt = StreamState(Stream("v1", None))
    f.rt.set_tail_start(NOW - 10_800_000)
    f.rt.advance_watermark(NOW - 60_000)
    f.rt.set_read_through(NOW - 60_000)
    f.rt.set_sweep_lo(NOW - 2_400_000)
    f.now = NOW + 3_600_000  # restarted an hour after the stop
    owed = f.rt.owe_restart_sweep(5_000, 600_000)
    assert owed == [(NOW - 2_400_000, NOW - 65_000)]
    reads = 0

    async def read(
        lo: int, hi: int | None, extra: Sequence[RateBudget], priority: Priority
    ) -> AsyncIterator[list[Event]]:
        nonlocal reads
        reads += 1
        if reads == 3:
            raise RuntimeError("kill -9")
        yield [ev(reads, lo)]

    t = f.tail()
    t._read = read
    with pytest.raises(RuntimeError):
        await t.restart_sweep(owed)
    rest = [(NOW - 2_400_000 + 1_200_000, NOW - 65_000)]
    assert f.rt.owed == rest
    assert StreamState.restore(written(f.rt))[f.rt.stream].owed == rest
