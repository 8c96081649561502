"""Async token buckets with priority-ordered waiters and AIMD adaptation to 429s."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from ingestor.clock import monotonic
from ingestor.metrics import RATE_BUDGET

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# A burst of 429s from one of Stripe's one-second windows must halve the rate once, not N times.
DECREASE_INTERVAL = 1.0
# Float rounding can leave a deficit too small for any clock to advance past; count it as paid.
EPSILON = 1e-9
MIN_WAIT = 0.001
# A reserve follows its parent's rate down, but never to a standstill.
MIN_RESERVE_RATE = 0.01
# The fair-queueing table is pruned of idle parties once it holds 4x this many.
FAIR_PARTIES_KEPT = 10_000

fair_key: ContextVar[str | None] = ContextVar("fair_key", default=None)
"""The party a request is made for (the pipeline sets its stream's key in each stream's task):
within one priority, buckets share their tokens fairly among parties (start-time fair
queueing), so one busy stream with many requests queued cannot starve the others."""


class PriorityLock:
    """A lock handed on to the waiter with the lowest (priority, virtual time, arrival) when
    released.

    Lower numbers are served first (see `ingestor.limits.Priority`); within a priority the
    lowest virtual time (fair queueing: 0 unless the caller uses it), then first come, first
    served. A waiter cancelled while queued is skipped.
    """

    __slots__ = ("_heap", "_held")

    def __init__(self) -> None:
        self._held = False
        self._heap: list[tuple[int, float, int, asyncio.Future[None]]] = []

    async def acquire(self, priority: int, seq: int, vtime: float = 0.0) -> None:
        if not self._held and not self._pending():
            self._held = True
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (priority, vtime, seq, fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed over just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while self._heap:
            fut = heapq.heappop(self._heap)[3]
            if not fut.done():
                fut.set_result(None)  # still held: ownership moves to that waiter
                return
        self._held = False

    def idle(self) -> bool:
        """Neither held nor waited for: an `acquire` now would return at once."""
        return not self._held and not self._pending()

    def outranked(self, priority: int, seq: int, vtime: float = 0.0) -> bool:
        """Whether a waiter queued ahead of (priority, vtime, seq) is waiting for this lock."""
        return self._pending() and self._heap[0][:3] < (priority, vtime, seq)

    def _pending(self) -> bool:
        heap = self._heap
        while heap and heap[0][3].done():
            heapq.heappop(heap)
        return bool(heap)


class RateBudget:
    """A token bucket shared by every request that acquires it, with AIMD adaptation to 429s.

    Waiters are served by priority, then first come, first served: a `PriorityLock` goes to
    the best waiter, and the holder sleeps exactly until its tokens exist, so nobody polls.
    Within a priority, waiters of different parties (`fair_key`) are served by start-time
    fair queueing: each party's requests get virtual start times one cost apart, from no
    earlier than the virtual time now, so a party that queued many requests is served in
    turn with one that just arrived, not ahead of it.
    A holder that wakes to find a better waiter queued hands the lock (and the token it
    waited for) over and queues again with its original place, so a tail poll arriving
    behind a queue of backfill requests gets the very next token.
    `on_rate_limited` halves the rate (at most once per second, never below `min_rate`);
    `on_success` adds back a small step until the configured rate is reached again.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        min_rate: float = 1.0,
        recovery: float = 0.005,
        clock: Clock = monotonic,
        sleep: Sleep = asyncio.sleep,
        report: bool = True,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate!r}")
        self._configured = float(rate)
        self._rate = float(rate)
        self._min_rate = min(float(min_rate), self._configured)
        # Small by default: a full bucket spent at once must not overshoot Stripe's 1 s window.
        self._burst = float(burst) if burst is not None else max(1.0, rate / 10.0)
        self._step = self._configured * recovery
        self._clock = clock
        self._sleep = sleep
        self._report = report
        self._tokens = self._burst
        self._stamp = clock()
        self._last_decrease: float | None = None
        self._lock = PriorityLock()
        self._arrivals = itertools.count()
        # Fair queueing: the virtual time served so far, and each party's next start.
        self._vnow = 0.0
        self._vnext: dict[str, float] = {}
        # A reserved part of this budget's rate whose requests wait at a better priority.
        self._reserve: RateBudget | None = None
        self._reserve_fraction = 0.0
        self._reserve_priority = 0
        # For a share: the budget it is a share of, and which fraction.
        self._parent: RateBudget | None = None
        self._fraction = 1.0
        self._publish()

    @property
    def rate(self) -> float:
        """The current rate in requests per second (after any 429 decreases)."""
        return self._rate

    @property
    def configured_rate(self) -> float:
        return self._configured

    @property
    def burst(self) -> float:
        return self._burst

    @property
    def clock(self) -> Clock:
        """The time source this bucket refills by (other buckets beside it share it)."""
        return self._clock

    @property
    def sleep(self) -> Sleep:
        return self._sleep

    def share(self, fraction: float) -> RateBudget:
        """A sub-budget capping one class of traffic (e.g. sweeps) at `fraction` of this rate.

        Callers acquire it in addition to this budget (see `StripeClient.request`'s
        `extra_budgets`), so the class can never use more than its share of the whole.
        A share is a fixed cap: 429s adapt the limiter Stripe named, never a share.
        """
        if not 0 < fraction <= 1:
            raise ValueError(f"share must be in (0, 1], got {fraction!r}")
        sub = RateBudget(
            self._configured * fraction,
            min_rate=min(self._min_rate, self._configured * fraction),
            clock=self._clock,
            sleep=self._sleep,
            report=False,
        )
        sub._parent = self
        sub._fraction = fraction
        return sub

    def reserve(self, fraction: float, priority: int) -> None:
        """Sets aside `fraction` of this budget's rate for requests lifted to `priority` (see
        `lifting`): the class this budget caps is never starved outright by better-placed
        traffic, yet takes no more than the reserve ahead of it. For a share, the reserve is
        that fraction of the share of the parent's *current* rate: when 429s cut the rate,
        the reserve shrinks with it and never takes everything from whom it goes ahead of."""
        if not 0 < fraction <= 1:
            raise ValueError(f"reserve must be in (0, 1], got {fraction!r}")
        self._reserve_fraction = fraction
        self._reserve = RateBudget(
            self._configured * fraction,
            min_rate=MIN_RESERVE_RATE,
            clock=self._clock,
            sleep=self._sleep,
            report=False,
        )
        self._reserve_priority = priority

    @property
    def reserved(self) -> bool:
        return self._reserve is not None

    async def lifting(self, admit: Callable[[int], Awaitable[None]], priority: int) -> int:
        """Runs `admit(priority)` (the waits for every other limiter), lifted to the reserve's
        priority if a token of the reserve comes first; returns the priority it ran at.

        A request that found no reserve token on arrival waits at its own priority until
        the next one accrues, then queues again, lifted: a backlog ahead of it that begins
        after it queued cannot hold it for longer than the reserve's interval. (Tokens it
        took from other limiters before it was lifted are spent: one request's worth.)
        """
        reserve = self._reserve
        if reserve is None:
            await admit(priority)
            return priority
        if self._parent is not None:
            reserve._refill()  # what accrued so far accrued at the old rate
            reserve._rate = max(
                MIN_RESERVE_RATE, self._parent.rate * self._fraction * self._reserve_fraction
            )
        lifted = min(priority, self._reserve_priority)
        if not reserve.try_take():
            # Raced against this bucket's own sleep, not a loop timeout: its clock may be
            # another (a test's manual one).
            async def wait(aw: Awaitable[None]) -> None:
                await aw

            async with asyncio.TaskGroup() as tg:
                waited = tg.create_task(wait(admit(priority)))
                timer = tg.create_task(wait(self._sleep(reserve.wait_for_token())))
                await asyncio.wait((waited, timer), return_when=asyncio.FIRST_COMPLETED)
                timer.cancel()
                if not waited.done():
                    waited.cancel()
            if not waited.cancelled():
                return priority
            await reserve.acquire(priority=priority)
        await admit(lifted)
        return lifted

    def wait_for_token(self) -> float:
        """Seconds until a whole token will be saved up (0 if one is now)."""
        self._refill()
        return max(0.0, (1.0 - self._tokens) / self._rate)

    def try_take(self) -> bool:
        """Takes a token if one is free now (`has_room`), without waiting or queueing."""
        if not self.has_room():
            return False
        self._tokens -= 1.0
        return True

    async def acquire(self, cost: float = 1.0, *, priority: int = 0) -> None:
        """Waits until `cost` tokens are available and takes them; among waiters the lowest
        `priority`, then the earliest, is served first."""
        if cost <= 0:
            return
        seq = next(self._arrivals)
        vtime = self._vstart(fair_key.get(), cost)
        # A cost above the burst could never be met in full; it is taken as debt instead.
        need = min(cost, self._burst)
        if self._lock.idle():
            # Nobody holds or waits for the lock: what taking and releasing it would do,
            # without the round trip (most acquisitions find a token at once).
            self._refill()
            if self._tokens + EPSILON >= need:
                self._tokens -= cost
                self._vnow = max(self._vnow, vtime)
                return
        while True:
            await self._lock.acquire(priority, seq, vtime)
            try:
                while True:
                    if self._lock.outranked(priority, seq, vtime):
                        break  # released below: the better waiter takes the next token
                    self._refill()
                    if self._tokens + EPSILON >= need:
                        self._tokens -= cost
                        self._vnow = max(self._vnow, vtime)
                        return
                    # Never a wait too short to move a clock: a shortfall of a few billionths
                    # of a token would otherwise sleep 0 s (simulated time advances in whole
                    # microseconds) and spin here forever.
                    await self._sleep(max(MIN_WAIT, (need - self._tokens) / self._rate))
            finally:
                self._lock.release()

    def _vstart(self, party: str | None, cost: float) -> float:
        """The virtual start time of a request of `party` (None: no party, served at the
        virtual time now, i.e. first come, first served among equals)."""
        if party is None:
            return self._vnow
        start = max(self._vnow, self._vnext.get(party, 0.0))
        self._vnext[party] = start + cost
        if len(self._vnext) > 4 * FAIR_PARTIES_KEPT:
            # Parties whose next start is already behind the virtual time hold nothing back.
            self._vnext = {k: v for k, v in self._vnext.items() if v > self._vnow}
        return start

    def has_room(self) -> bool:
        """True when a request could take a token now without waiting: nobody is queued and
        a whole token is saved up. A bucket that binds has neither."""
        if not self._lock.idle():
            return False
        self._refill()
        return self._tokens + EPSILON >= 1.0

    def on_rate_limited(self) -> None:
        """Stripe said 429: halve the rate (once per window) and drop any saved-up burst."""
        self._refill()
        self._tokens = min(self._tokens, 0.0)
        now = self._clock()
        if self._last_decrease is not None and now - self._last_decrease < DECREASE_INTERVAL:
            return
        self._last_decrease = now
        self._rate = max(self._min_rate, self._rate * 0.5)
        self._publish()

    def on_success(self) -> None:
        """A request went through: creep back towards the configured rate."""
        if self._rate >= self._configured:
            return
        self._refill()
        self._rate = min(self._configured, self._rate + self._step)
        self._publish()

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)

    def _publish(self) -> None:
        if self._report:
            RATE_BUDGET.set(self._rate)

    def __repr__(self) -> str:
        return f"RateBudget(rate={self._rate:g}, configured={self._configured:g})"


__all__ = ["PriorityLock", "RateBudget", "fair_key"]
