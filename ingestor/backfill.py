"""Backfill of one stream: concurrent slices, split when dense, emitted oldest first."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import structlog

from ingestor.clock import monotonic

log = structlog.get_logger(__name__)

# An idle-cursor split leaves each part at least this many pages: each part ends in a partial
# page, one request more, which a few pages' worth of parallel round trips repays.
MIN_IDLE_SPLIT_PAGES = 2


class Timed(Protocol):
    """Anything with a created time: events, or events already turned into records."""

    @property
    def created_ms(self) -> int: ...


T = TypeVar("T", bound=Timed)

Fetch = Callable[[int, int], AsyncIterator[list[T]]]
"""fetch(lo_ms, hi_ms) yields pages (newest first) of the items created in [lo_ms, hi_ms)."""


@dataclass(slots=True)
class Slice(Generic[T]):
    """[lo_ms, hi_ms) of created time; `events` is set once the slice is fully fetched."""

    lo_ms: int
    hi_ms: int
    events: list[T] | None = None
    in_flight: bool = False
    pages: int = 0

    @property
    def done(self) -> bool:
        return self.events is not None


@dataclass(slots=True)
class SlicePlan(Generic[T]):
    """Ordered, gap-free cover of the backfill range by slices. Pure; no I/O.

    Invariant: the slices are sorted, adjacent and cover [start_ms, end_ms) exactly, so no
    boundary can drop or double an event: each created time belongs to exactly one slice,
    half-open at its upper end.
    """

    start_ms: int
    end_ms: int
    granularity_ms: int
    slices: list[Slice[T]] = field(default_factory=list)

    @classmethod
    def build(cls, start_ms: int, end_ms: int, slice_ms: int, granularity_ms: int) -> SlicePlan[T]:
        plan: SlicePlan[T] = cls(start_ms, end_ms, granularity_ms)
        lo = start_ms
        while lo < end_ms:
            hi = min(end_ms, _align_up(lo + slice_ms, granularity_ms))
            plan.slices.append(Slice[T](lo, hi))
            lo = hi
        return plan

    def next_pending(self) -> Slice[T] | None:
        """The oldest slice nobody is fetching yet (oldest first keeps memory near the head)."""
        for s in self.slices:
            if not s.done and not s.in_flight:
                return s
        return None

    def split(self, s: Slice[T], at_ms: int, parts: int) -> list[Slice[T]]:
        """Cuts [s.lo, at_ms) off `s` into `parts` new pending slices; `s` keeps [at_ms, hi)."""
        assert s.lo_ms < at_ms < s.hi_ms, (s, at_ms)
        assert at_ms % self.granularity_ms == 0, at_ms
        width = at_ms - s.lo_ms
        bounds = sorted(
            {s.lo_ms + _align_down(width * i // parts, self.granularity_ms) for i in range(parts)}
            | {at_ms}
        )
        new = [Slice[T](lo, hi) for lo, hi in itertools.pairwise(bounds) if lo < hi]
        idx = self.slices.index(s)
        s.lo_ms = at_ms
        self.slices[idx:idx] = new
        return new

    def ready_head(self) -> Slice[T] | None:
        """The oldest slice when it is fetched (the next to emit), else None."""
        return self.slices[0] if self.slices and self.slices[0].done else None

    def drop_head(self, s: Slice[T]) -> None:
        """Removes `s`, the head, once it is emitted."""
        assert self.slices[0] is s, s
        self.slices.pop(0)

    def blocks_emission(self, s: Slice[T]) -> bool:
        """True if `s` lies before every fetched slice, so nothing can be emitted without it."""
        for x in self.slices:
            if x is s:
                return True
            if x.done:
                return False
        return False

    @property
    def finished(self) -> bool:
        return not self.slices

    def in_flight(self) -> int:
        """How many slices are being fetched."""
        return sum(1 for s in self.slices if s.in_flight)

    def buffered_events(self) -> int:
        return sum(len(s.events) for s in self.slices if s.events is not None)


def _align_up(ms: int, granularity: int) -> int:
    return -(-ms // granularity) * granularity


def _align_down(ms: int, granularity: int) -> int:
    return ms - ms % granularity


@dataclass(slots=True)
class BackfillStats:
    events: int = 0
    pages: int = 0
    slices_done: int = 0
    splits: int = 0
    started: float = field(default_factory=monotonic)


class Backfiller(Generic[T]):
    """Fetches a plan's slices concurrently and emits them in created order.

    A slice is fetched newest first; after `split_after_pages` full pages it has proven dense:
    the part already read ([oldest second fully read, hi)) is kept, and the rest is cut into
    new slices sized by the observed density, so a busy day fans out over more concurrent
    cursors instead of crawling through one. A rest expected to hold less than that many
    pages is read through instead: splitting it would only add partial pages.

    With `eager_split`, a slice may split after its first full page already: for a plan of one
    slice over a range of unknown density (a catch-up), whose first request tells that
    density, so a quiet range costs one request instead of one per slice, and a busy one fans
    out one round trip later.

    Near the end nothing is pending and cursors fall idle while the last slices are each
    walked one page per round trip. When `room()` says the rate budget has tokens to spare
    (the walk is bound by latency, not by the rate), a slice with at least
    `MIN_IDLE_SPLIT_PAGES` pages per part left is split over the idle cursors, so the tail
    of a backfill keeps the rate busy. While the rate binds, `room()` is False and nothing
    is split: an extra part would only cost a partial page, a request of the rate that binds.
    """

    def __init__(
        self,
        plan: SlicePlan[T],
        fetch: Fetch[T],
        emit: Callable[[Slice[T]], Awaitable[None]],
        *,
        concurrency: int,
        max_buffered_events: int,
        split_after_pages: int = 8,
        page_size: int = 100,
        eager_split: bool = False,
        room: Callable[[], bool] | None = None,
    ) -> None:
        self.plan = plan
        self._fetch = fetch
        self._emit = emit
        self._concurrency = concurrency
        self._max_buffered = max_buffered_events
        self._split_after = split_after_pages
        self._page_size = page_size
        self._first_split = 1 if eager_split else split_after_pages
        self._room = room
        self._changed = asyncio.Event()
        self.stats = BackfillStats()

    async def run(self) -> None:
        """Returns when every slice is emitted. Cancelling it drops only unemitted work.

        May be called again after it raised (a fetch gave up): unemitted work resumes.
        """
        # No fetch of an earlier run() is alive (its task group has exited), but a fetch task
        # cancelled before it ever started never ran its `finally`: clear the stale flags, or
        # those slices would count as in flight forever and this run would wait for nothing.
        for s in self.plan.slices:
            s.in_flight = False
        async with asyncio.TaskGroup() as tg:
            while not self.plan.finished:
                # Cleared before the scan, not just before waiting: a fetch that finishes while
                # an emit below awaits must still wake the wait (else a lost wakeup hangs the
                # run once nothing else is in flight).
                self._changed.clear()
                # Dropped from the plan only once emitted: an emit cancelled while it waits
                # (a fetch failed meanwhile) leaves its slice, and those after it, to the next
                # run() instead of losing them. So `emit` must do all or nothing when
                # cancelled: wait first, then act without awaiting.
                while (head := self.plan.ready_head()) is not None:
                    await self._emit(head)
                    self.plan.drop_head(head)
                    self.stats.slices_done += 1
                if self.plan.finished:
                    break
                in_flight = self.plan.in_flight()
                while in_flight < self._concurrency:
                    nxt = self.plan.next_pending()
                    if nxt is None:
                        break
                    # Bounded memory: past the buffer bound only slices older than every
                    # fetched one may start: the buffer waits on exactly those to drain. (Only
                    # the head would serialize a split head's parts onto one cursor.)
                    if (
                        self.plan.buffered_events() >= self._max_buffered
                        and not self.plan.blocks_emission(nxt)
                    ):
                        break
                    nxt.in_flight = True
                    in_flight += 1
                    tg.create_task(self._fetch_slice(nxt))
                await self._changed.wait()

    async def _fetch_slice(self, s: Slice[T]) -> None:
        try:
            events: list[T] = []
            pages = 0
            async for page in self._fetch(s.lo_ms, s.hi_ms):
                pages += 1
                self.stats.pages += 1
                events.extend(page)
                if len(page) >= self._page_size and (
                    (pages >= self._first_split and self._try_split(s, events))
                    or self._try_idle_split(s, events)
                ):
                    # The split narrowed s to the part already read; drop the rest.
                    events = [e for e in events if e.created_ms >= s.lo_ms]
                    break
            events.reverse()  # oldest first within the slice
            events.sort(key=lambda e: e.created_ms)  # stable: keeps Stripe's order per second
            s.events = events
            s.pages = pages
            self.stats.events += len(events)
        finally:
            s.in_flight = False
            self._changed.set()

    def _try_split(self, s: Slice[T], events: Sequence[T]) -> bool:
        """Splits a slice proven dense: parts of about `split_after_pages` pages each."""
        rest = self._unread(s, events)
        if rest is None:
            return False
        cut, expected = rest
        target = self._split_after * self._page_size
        if expected < target:
            # Less than another run of pages is left: one cursor reads it in as many requests
            # as parts would, and every extra part costs a partial page (a request, which is
            # what a per-endpoint rate limit counts).
            return False
        parts = max(2, min(32, math.ceil(expected / target)))
        self.plan.split(s, cut, parts)
        self.stats.splits += 1
        return True

    def _try_idle_split(self, s: Slice[T], events: Sequence[T]) -> bool:
        """Splits the rest of `s` over idle cursors while the rate has room (see the class)."""
        if self._room is None or self.plan.next_pending() is not None:
            return False
        idle = self._concurrency - self.plan.in_flight()
        # Past the buffer bound only slices blocking emission may start (see run()); the
        # parts of s are older than s, so they may start exactly when s itself blocks.
        if idle <= 0 or (
            self.plan.buffered_events() >= self._max_buffered and not self.plan.blocks_emission(s)
        ):
            return False
        rest = self._unread(s, events)
        if rest is None:
            return False
        cut, expected = rest
        # s's own cursor is freed by the split, so idle + 1 cursors take the parts.
        parts = min(idle + 1, int(expected // (MIN_IDLE_SPLIT_PAGES * self._page_size)))
        if parts < 2 or not self._room():
            return False
        self.plan.split(s, cut, parts)
        self.stats.splits += 1
        return True

    def _unread(self, s: Slice[T], events: Sequence[T]) -> tuple[int, float] | None:
        """Where the unread rest of `s` ends (exclusive) and how many events it is expected to
        hold, from the density of what was read; None when nothing can be cut off."""
        oldest = min(e.created_ms for e in events)
        # Everything from the granularity unit above the oldest one was read completely;
        # the oldest unit may continue on the next page, so it goes to the remainder.
        cut = _align_down(oldest, self.plan.granularity_ms) + self.plan.granularity_ms
        if cut >= s.hi_ms or cut <= s.lo_ms:
            return None  # all one dense unit of time: nothing to split, read it through
        kept = sum(1 for e in events if e.created_ms >= cut)
        density = kept / max(1, s.hi_ms - cut)
        return cut, density * (cut - s.lo_ms)
