"""Live tail of one stream: adaptive polls of a trailing window plus a slow sweep for late ones."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import structlog

from ingestor import clock, metrics, retry
from ingestor.config import TailConfig
from ingestor.events import Event, Stream
from ingestor.limits import Priority
from ingestor.ratelimit import RateBudget
from ingestor.stream import StreamState

log = structlog.get_logger(__name__)
T = TypeVar("T")

ReadWindow = Callable[[int, int | None, Sequence[RateBudget], Priority], AsyncIterator[list[Event]]]
"""read(lo_ms, hi_ms or None, extra budgets, priority) yields pages (newest first) of events in
the window."""

Accept = Callable[[list[Event], int | None, Priority], Awaitable[int]]
"""accept(events read, newest first; newest created seen; the priority the new ones' hydrations
wait at) queues the new ones; returns how many."""

# A sweep's new events are late ones, few and already the oldest unpublished: their
# hydrations go ahead of everything, or a sweep page waits behind a catch-up's whole
# hydration backlog (seed 303: v2 sweeps spent 657 of 711 s so, ran slower than the time they
# covered, were cut, and late events in the cut were lost).
SWEEP_HYDRATION = Priority.TAIL

# Slow sweeps in a row (each slower than its window and than the time it covered) before the
# next one is cut: fewer are a stop's or a 429 storm's backlog, which sweeps catch up on.
SLOW_SWEEPS_BEFORE_CUT = 3


def _now_ms() -> int:
    return clock.wall_ms()


def next_poll_interval(current: float, new: int, base: float, cap: float) -> float:
    """The wait before a stream's next poll: `base` after a poll that found news, else twice
    the last wait, up to `cap` (never below `base`). Idle streams so cost their share of the
    budget over the whole idle cap, while a stream with news is polled at the base rate."""
    if new > 0:
        return base
    return min(max(current * 2, base), max(cap, base))


class Tail:
    """Reads one stream's new events, and re-reads for late ones, without missing any.

    Every poll re-reads from `watermark - overlap` to now: events that became visible a few
    seconds late land there and the seen window drops the ones already published. A sweep
    every `sweep_interval_seconds` re-reads the longer window behind that, under its own
    sub-budget (a share of the shared rate), so its cost at high event rates stretches its
    period instead of starving the polls. A poll's cost is rate x (overlap + interval), never
    rate x sweep window.

    Each sweep starts where the previous one left the stream's sweep bound (its start, or the
    time the stream is read through if earlier, less the window), which the state topic
    keeps: an event visible up to a window late is read by the first sweep that starts after
    it appeared, however long a sweep, a poll or a stop lasted.
    After a restart the first sweep reads what the last one before the stop still owed, up to
    where the stop began; the catch-up read everything after that as of the restart.

    Idle streams are polled less often: each poll that finds nothing doubles the wait before
    the next, up to `idle_cap()` (set from the budget and the number of streams), and news
    (or a `nudge`) brings it back to `poll_interval`. An idle stream's sweep costs nothing:
    its poll window already reaches back to its newest event, so the sweep's range is empty.
    """

    def __init__(
        self,
        rt: StreamState,
        read: ReadWindow,
        accept: Accept,
        config: TailConfig,
        *,
        sweep_budget: RateBudget | None,
        page_size: int = 100,
        on_poll_ok: Callable[[], None] = lambda: None,
        clock_ms: Callable[[], int] = _now_ms,
        floor_ms: Callable[[], int] = lambda: 0,
        read_gap: Callable[[], Awaitable[tuple[int, int] | None]] | None = None,
        busy_pages: int = 10,
        idle_cap: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._rt = rt
        self._read = read
        self._accept = accept
        self._cfg = config
        self._sweep_budget = sweep_budget
        self._page_size = page_size
        self._on_poll_ok = on_poll_ok
        self._clock_ms = clock_ms
        self._floor_ms = floor_ms
        self._read_gap = read_gap
        self._busy_pages = busy_pages
        self._idle_cap = idle_cap
        self.interval = config.poll_interval
        self._overlap_ms = int(config.overlap_seconds * 1000)
        self._window_ms = int(config.sweep_window_seconds * 1000)
        self._busy = False
        self.polls = 0
        self.sweeps = 0
        # How long the last sweep took (monotonic seconds), and how many sweeps in a row
        # were slower than both the created time they covered and the window: sweeps that
        # keep so cannot keep up with the event rate, and the next one is cut (see `sweep`).
        self.sweep_seconds = 0.0
        self.slow_sweeps = 0  # in a row
        # Webhook deliveries wake the poll loop (instead of its sleep) and wait for a poll
        # that started after them: numbered starts and the newest number that finished.
        self._wake = asyncio.Event()
        self._started = 0
        self._finished = 0
        self._finish = asyncio.Condition()

    @property
    def stream(self) -> Stream:
        return self._rt.stream

    async def poll(self) -> int:
        """One pass over [watermark - overlap, now]; returns how many events were new.

        While polls are busy (many pages each), the window is read by `read_gap` in parallel
        ordered slices instead of one sequential walk, which must hold its whole window to
        publish it oldest first and reads one page per round trip: so a poll's cost stays
        rate x (overlap + interval) without its time growing with it. `read_gap` returns None
        when the window is too small to be worth slicing.
        """
        self._started += 1
        number = self._started
        new = await self._poll()
        async with self._finish:
            self._finished = max(self._finished, number)
            self._finish.notify_all()
        return new

    async def poll_after(self) -> None:
        """Wakes the poll loop and returns once a poll that started after this call has
        finished (what was listed then is queued: marked seen)."""
        target = self._started + 1
        self._wake.set()
        async with self._finish:
            await self._finish.wait_for(lambda: self._finished >= target)

    async def _poll(self) -> int:
        if self._busy and self._read_gap is not None:
            read = await self._read_gap()
            if read is not None:
                new, pages = read
                self._busy = pages >= self._busy_pages
                self.polls += 1
                self._on_poll_ok()
                return new
        started = self._clock_ms()
        lo = max(self._rt.poll_lo(self._overlap_ms), self._floor_ms())
        with self._rt.reading(lo):
            events, newest, pages = await self._collect(lo, None, (), Priority.TAIL)
            new = await self._accept(events, newest, Priority.HYDRATE)
        self._rt.set_read_through(started)
        self._busy = pages >= self._busy_pages
        self.polls += 1
        self._on_poll_ok()
        return new

    async def sweep(self, *, shared: bool = True) -> tuple[int, int]:
        """One pass over the sweep window; returns (new events, the wall time it started).

        `shared=False` lets it use the whole budget (nothing else is reading: `--once`).
        """
        lo, hi = self._rt.sweep_bounds(self._overlap_ms, self._window_ms)
        if self.slow_sweeps >= SLOW_SWEEPS_BEFORE_CUT:
            # Sweeps that read created time slower than it passes (the sweep share is too
            # small for the event rate) would each start further back, without bound: cover
            # twice the window and report the rest, rather than hold the seen window and the
            # state ever longer. (Not after one or two slow sweeps, such as a restart's after
            # an hour's stop or one through a 429 storm: those catch up. Seed 303 lost 92
            # late events to cuts after one slow sweep in 24 h, then 49 after a slow one of a
            # long range was let be.)
            cut = self._rt.cut_sweep(lo, hi, 2 * self._window_ms)
            if cut > lo:
                metrics.SWEEP_SKIPPED.labels(stream=self._rt.stream.key).inc((cut - lo) / 1000)
                log.error(
                    "sweeps are slower than their window: late events in a skipped range are "
                    "not re-read",
                    stream=self._rt.stream.key,
                    skipped_from=lo,
                    skipped_to=cut,
                    last_sweep_s=round(self.sweep_seconds),
                    fix="raise tail.sweep_budget_share (or the rate limit) for this event rate",
                )
                lo = cut
        return await self._sweep([(lo, hi)], shared, restart=False)

    async def restart_sweep(
        self, owed: Sequence[tuple[int, int]], *, shared: bool = True
    ) -> tuple[int, int]:
        """Sweeps every range a restart owes (`StreamState.owe_restart_sweep`), below where
        its catch-up begins; returns (new events, the wall time it started)."""
        return await self._sweep(owed, shared, restart=True)

    async def _sweep(
        self, ranges: Sequence[tuple[int, int]], shared: bool, *, restart: bool
    ) -> tuple[int, int]:
        started = self._clock_ms()
        t0 = clock.monotonic()
        new = 0
        for lo, hi in ranges:
            new += await self._sweep_range(lo, hi, shared)
        self.sweeps += 1
        span = sum(hi - lo for lo, hi in ranges)
        self.sweep_seconds = clock.monotonic() - t0
        slow = self.sweep_seconds > max(self._cfg.sweep_window_seconds, max(0, span) / 1000)
        self.slow_sweeps = self.slow_sweeps + 1 if slow else 0
        if new and restart:
            log.info(
                "restart sweep found late events",
                new=new,
                window_s=round(span / 1000, 1),
                ranges=len(ranges),
            )
        elif new:
            log.info("sweep found late events", new=new, window_s=round(span / 1000, 1))
        metrics.SWEEP_WINDOW.labels(stream=self._rt.stream.key).set(max(0, span) / 1000)
        return new, started

    async def _sweep_range(self, lo: int, hi: int, shared: bool) -> int:
        """Sweeps [lo, hi) in spans of one window, oldest first, and records after each what
        it settled (`StreamState.settle_swept`): a sweep that a crash or a stop cuts short
        leaves the next one only the rest. (Seed 300: a crash every few minutes after an
        hour's stop cut each restart sweep short, and each restart owed more than the last.)
        """
        lo = max(lo, self._floor_ms())
        new = 0
        span = max(self._window_ms, 1)
        while lo < hi:
            top = min(hi, lo + span)
            read_at = self._clock_ms()
            new += await self._sweep_span(lo, top, shared)
            if self._window_ms > 0 and self._rt.settle_swept(lo, top, read_at, self._window_ms):
                await self._accept([], None, Priority.HYDRATE)
            lo = top
        return new

    async def _sweep_span(self, lo: int, hi: int, shared: bool) -> int:
        new = 0
        extra = (self._sweep_budget,) if shared and self._sweep_budget is not None else ()
        # Page by page: at high rates the window is large, and what a sweep finds is late
        # events, which are already out of order; nothing is gained by holding the window.
        with self._rt.reading(lo, hi):
            async for page in self._read(lo, hi, extra, Priority.SWEEP):
                new += await self._accept(page, None, SWEEP_HYDRATION)
        return new

    async def _finish_sweep(self, started_ms: int, *, restart: bool = False) -> None:
        """Moves the next sweep's bound to a window behind `started_ms` or the time the stream
        is read through, whichever is earlier (and, after a restart sweep, settles what the
        restart owed), and persists it."""
        self._rt.finish_sweep(started_ms, self._window_ms, restart=restart)
        await self._accept([], None, Priority.HYDRATE)

    async def _collect(
        self, lo: int, hi: int | None, extra: Sequence[RateBudget], priority: Priority
    ) -> tuple[list[Event], int | None, int]:
        events: list[Event] = []
        pages = 0
        async for page in self._read(lo, hi, extra, priority):
            events.extend(page)
            pages += 1
        newest = max((e.created_ms for e in events), default=None)
        return events, newest, pages

    async def run_once(self, catch_up: Callable[[], Awaitable[object]] | None = None) -> None:
        """Catches up, polls until a poll brings less than a page, then does the restart
        sweep (at the whole budget: nothing else reads) and records its bound."""
        began = self._clock_ms()
        owed = self._owe_restart_sweep()
        if catch_up is not None:
            await _retrying(catch_up, "catch-up")
            self._settle_catch_up(began)
        while await _retrying(self.poll, "poll") >= self._page_size:
            pass
        if self._window_ms > 0:
            _, started = await _retrying(lambda: self.restart_sweep(owed, shared=False), "sweep")
            await self._finish_sweep(min(started, began), restart=True)

    async def run(self, catch_up: Callable[[], Awaitable[object]] | None = None) -> None:
        """Catches up, then polls and sweeps until cancelled (cancellation stops intake)."""
        began = self._clock_ms()
        owed = self._owe_restart_sweep()
        caught_up = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            if self._window_ms > 0:
                tg.create_task(self._sweep_loop(owed, began, caught_up))
            if catch_up is not None:
                await _retrying(catch_up, "catch-up")
                self._settle_catch_up(began)
            caught_up.set()
            tg.create_task(self._poll_loop())

    def _owe_restart_sweep(self) -> list[tuple[int, int]]:
        # Before the catch-up moves the watermark: up to where the stop began.
        if self._window_ms <= 0:
            return []
        return self._rt.owe_restart_sweep(self._overlap_ms, self._window_ms)

    def _settle_catch_up(self, began: int) -> None:
        # The catch-up read from where the owed ranges end, after the restart began: what it
        # read a window before that needs no sweep. (Without this, a process stopped during
        # its restart sweep owed the next one every hour its catch-up had read.)
        if self._window_ms > 0 and self._rt.owed:
            self._rt.settle(began, self._window_ms)

    def nudge(self) -> None:
        """Poll now rather than at the end of the current wait (a webhook said there is news)."""
        self._wake.set()

    async def _poll_loop(self) -> None:
        base = self._cfg.poll_interval
        gauge = metrics.POLL_INTERVAL.labels(stream=self._rt.stream.key)
        while True:
            # A wake-up during this poll asks for another one right after it.
            self._wake.clear()
            new = await _retrying(self.poll, "poll")
            # Adaptive: a full page of news means more is probably waiting; ask again now.
            if new >= self._page_size or self._wake.is_set():
                self.interval = base
                continue
            self.interval = next_poll_interval(self.interval, new, base, self._idle_cap())
            gauge.set(self.interval)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()

    async def _sweep_loop(
        self, owed: list[tuple[int, int]], began: int, caught_up: asyncio.Event
    ) -> None:
        loop_time = clock.monotonic
        t0 = loop_time()
        _, started = await _retrying(lambda: self.restart_sweep(owed), "sweep")
        # The next sweep may start above the restart's range only once the catch-up, which
        # read everything after it as of `began`, is done.
        await caught_up.wait()
        await self._finish_sweep(min(started, began), restart=True)
        while True:
            rest = self._cfg.sweep_interval_seconds - (loop_time() - t0)
            await asyncio.sleep(max(rest, self._cfg.poll_interval))
            t0 = loop_time()
            _, started = await _retrying(self.sweep, "sweep")
            await self._finish_sweep(started)


async def _retrying(fn: Callable[[], Awaitable[T]], what: str) -> T:
    """Re-runs `fn` after retriable failures (the client already retried each request);
    re-raises what retrying cannot fix, such as a revoked key."""
    return await retry.forever(what).call(fn)
