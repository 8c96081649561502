"""Tail polling: trailing-window reads, the switch to sliced reads when busy, streamed sweeps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from ingestor.config import TailConfig
from ingestor.events import Event
from ingestor.ratelimit import RateBudget
from ingestor.tail import Tail

NOW = 1_000_000_000


def ev(i: int, created_ms: int) -> Event:
    return Event(f"evt_{i}", "charge.updated", "v1", None, created_ms, False, None, "ch", {})


class Fake:
    """A scripted source: each read yields the queued pages and records its window."""

    def __init__(self) -> None:
        self.pages: list[list[list[Event]]] = []
        self.windows: list[tuple[int, int | None, int]] = []
        self.accepted: list[tuple[int, int | None]] = []
        self.gap_results: list[tuple[int, int] | None] = []
        self.gap_calls = 0
        self.watermark = NOW - 60_000

    async def read(
        self, lo: int, hi: int | None, extra: Sequence[RateBudget]
    ) -> AsyncIterator[list[Event]]:
        self.windows.append((lo, hi, len(extra)))
        for page in self.pages.pop(0) if self.pages else []:
            yield page

    async def accept(self, events: list[Event], newest: int | None) -> int:
        self.accepted.append((len(events), newest))
        if newest is not None:
            self.watermark = max(self.watermark, newest)
        return len(events)

    async def read_gap(self) -> tuple[int, int] | None:
        self.gap_calls += 1
        return self.gap_results.pop(0) if self.gap_results else None

    def tail(self) -> Tail:
        cfg = TailConfig(overlap_seconds=5, sweep_window_seconds=600)
        return Tail(
            self.read,
            self.accept,
            cfg,
            watermark=lambda: self.watermark,
            tail_start_ms=NOW - 3_600_000,
            sweep_budget=RateBudget(10),
            page_size=2,
            clock_ms=lambda: NOW,
            read_gap=self.read_gap,
            busy_pages=3,
        )


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
    f.pages = [pages(3), pages(1)]
    f.gap_results = [None]
    t = f.tail()
    await t.poll()
    assert await t.poll() == 2
    assert f.gap_calls == 1
    assert len(f.windows) == 2


async def test_a_sweep_reads_behind_the_poll_window_under_its_budget_page_by_page() -> None:
    f = Fake()
    f.watermark = NOW - 1_000
    f.pages = [pages(3)]
    t = f.tail()
    assert await t.sweep() == 6
    assert f.windows == [(NOW - 600_000, NOW - 1_000 - 5_000, 1)]
    assert f.accepted == [(2, None), (2, None), (2, None)]


async def test_run_once_polls_until_caught_up_then_sweeps_once() -> None:
    f = Fake()
    f.pages = [pages(2), pages(1, 100), [[ev(200, NOW)]], []]
    t = f.tail()
    await t.run_once()
    assert t.polls == 3  # 4 new, 2 new, then 1 new (< a page): caught up
    assert t.sweeps == 1
