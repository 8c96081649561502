"""Live tail of one stream: adaptive polls of a trailing window plus a slow sweep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import structlog

from ingestor import metrics
from ingestor.config import TailConfig
from ingestor.errors import IngestorError
from ingestor.events import Event
from ingestor.ratelimit import RateBudget

log = structlog.get_logger(__name__)

ReadWindow = Callable[[int, int | None, Sequence[RateBudget]], AsyncIterator[list[Event]]]
"""read(lo_ms, hi_ms or None, extra budgets) yields pages (newest first) of events in the window."""

Accept = Callable[[list[Event], int | None], Awaitable[int]]
"""accept(events read, newest created seen) publishes the new ones; returns how many were new."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class Tail:
    """Reads one stream's new events, and re-reads for late ones, without missing any.

    Every poll re-reads from `watermark - overlap` to now: events that became visible a few
    seconds late land there and the seen window drops the ones already published. A sweep
    every `sweep_interval_seconds` re-reads the longer window behind that, under its own
    sub-budget (a share of the shared rate), so its cost at high event rates stretches its
    period instead of starving the polls. A poll's cost is rate x (overlap + interval), never
    rate x sweep window.
    """

    def __init__(
        self,
        read: ReadWindow,
        accept: Accept,
        config: TailConfig,
        *,
        watermark: Callable[[], int],
        tail_start_ms: int,
        sweep_budget: RateBudget | None,
        page_size: int = 100,
        on_poll_ok: Callable[[], None] = lambda: None,
        clock_ms: Callable[[], int] = _now_ms,
        read_gap: Callable[[], Awaitable[tuple[int, int] | None]] | None = None,
        busy_pages: int = 10,
    ) -> None:
        self._read = read
        self._accept = accept
        self._cfg = config
        self._watermark = watermark
        self._tail_start_ms = tail_start_ms
        self._sweep_budget = sweep_budget
        self._page_size = page_size
        self._on_poll_ok = on_poll_ok
        self._clock_ms = clock_ms
        self._read_gap = read_gap
        self._busy_pages = busy_pages
        self._busy = False
        self.polls = 0
        self.sweeps = 0

    async def poll(self) -> int:
        """One pass over [watermark - overlap, now]; returns how many events were new.

        While polls are busy (many pages each), the window is read by `read_gap` in parallel
        ordered slices instead of one sequential walk, which must hold its whole window to
        publish it oldest first and reads one page per round trip: so a poll's cost stays
        rate x (overlap + interval) without its time growing with it. `read_gap` returns None
        when the window is too small to be worth slicing.
        """
        if self._busy and self._read_gap is not None:
            read = await self._read_gap()
            if read is not None:
                new, pages = read
                self._busy = pages >= self._busy_pages
                self.polls += 1
                self._on_poll_ok()
                return new
        lo = max(self._tail_start_ms, self._watermark() - int(self._cfg.overlap_seconds * 1000))
        events, newest, pages = await self._collect(lo, None, ())
        self._busy = pages >= self._busy_pages
        new = await self._accept(events, newest)
        self.polls += 1
        self._on_poll_ok()
        return new

    async def sweep(self) -> int:
        """One pass over the sweep window behind the poll window; returns how many were new."""
        now = self._clock_ms()
        lo = max(self._tail_start_ms, now - int(self._cfg.sweep_window_seconds * 1000))
        hi = self._watermark() - int(self._cfg.overlap_seconds * 1000)
        if hi <= lo:
            return 0
        extra = (self._sweep_budget,) if self._sweep_budget is not None else ()
        new = 0
        # Page by page: at high rates the window is large, and what a sweep finds is late
        # events, which are already out of order; nothing is gained by holding the window.
        async for page in self._read(lo, hi, extra):
            new += await self._accept(page, None)
        self.sweeps += 1
        if new:
            log.info("sweep found late events", new=new, window_s=round((hi - lo) / 1000, 1))
        return new

    async def _collect(
        self, lo: int, hi: int | None, extra: Sequence[RateBudget]
    ) -> tuple[list[Event], int | None, int]:
        events: list[Event] = []
        pages = 0
        async for page in self._read(lo, hi, extra):
            events.extend(page)
            pages += 1
        newest = max((e.created_ms for e in events), default=None)
        return events, newest, pages

    async def run_once(self) -> None:
        """Polls until a poll brings less than a page of new events, then sweeps once."""
        while await self.poll() >= self._page_size:
            pass
        if self._cfg.sweep_window_seconds > 0:
            await self.sweep()

    async def run(self) -> None:
        """Polls and sweeps until cancelled (cancellation is how intake stops)."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._poll_loop())
            if self._cfg.sweep_window_seconds > 0:
                tg.create_task(self._sweep_loop())

    async def _poll_loop(self) -> None:
        failures = 0
        while True:
            try:
                new = await self.poll()
                failures = 0
            except IngestorError as exc:
                failures = await _back_off(exc, failures, "poll")
                continue
            # Adaptive: a full page of news means more is probably waiting; ask again now.
            if new < self._page_size:
                await asyncio.sleep(self._cfg.poll_interval)

    async def _sweep_loop(self) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            try:
                await self.sweep()
                failures = 0
            except IngestorError as exc:
                failures = await _back_off(exc, failures, "sweep")
                continue
            rest = self._cfg.sweep_interval_seconds - (time.monotonic() - started)
            await asyncio.sleep(max(rest, self._cfg.poll_interval))


async def _back_off(exc: IngestorError, failures: int, what: str) -> int:
    """Waits before retrying a failed poll (the client already retried each request);
    re-raises what retrying cannot fix, such as a revoked key."""
    metrics.ERRORS.labels(kind=type(exc).__name__).inc()
    if not exc.retriable:
        raise exc
    delay = min(30.0, 0.5 * 2**failures)
    log.warning(f"{what} failed; retrying", error=str(exc), retry_in_s=delay)
    await asyncio.sleep(delay)
    return failures + 1
