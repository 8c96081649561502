"""Stripe's limiters as the client models them: a token bucket per limiter, concurrency caps,
priorities, and 429s that slow down only the limiter Stripe names."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import IntEnum

import structlog

from ingestor.clock import monotonic
from ingestor.config import StripeConfig
from ingestor.ratelimit import DECREASE_INTERVAL, Clock, RateBudget, Sleep, fair_key

log = structlog.get_logger(__name__)

FILES_PREFIX = "/v1/files"

# The values of Stripe-Rate-Limited-Reason (Stripe's rate-limit page).
GLOBAL_RATE = "global-rate"
ENDPOINT_RATE = "endpoint-rate"
GLOBAL_CONCURRENCY = "global-concurrency"
ENDPOINT_CONCURRENCY = "endpoint-concurrency"
RESOURCE_SPECIFIC = "resource-specific"
REASONS = (GLOBAL_RATE, ENDPOINT_RATE, GLOBAL_CONCURRENCY, ENDPOINT_CONCURRENCY, RESOURCE_SPECIFIC)


class Priority(IntEnum):
    """Who gets the next token or slot when several wait: the lowest value first."""

    TAIL = 0  # live polls: what users see as latency
    SWEEP_RESERVED = 1  # sweeps within their reserve (`RateBudget.reserve`): never starved
    HYDRATE = 2  # related objects of thin events already read
    SWEEP = 3  # re-reads for late events
    BACKFILL = 4  # history: takes whatever the others leave


class ConcurrencyCap:
    """At most `limit` requests in flight; waiters are served by (priority, arrival).

    A concurrency 429 halves the cap (at most once per second, never below 1); each success
    adds back a small step until the configured cap is reached again.
    """

    def __init__(self, limit: int, *, clock: Clock = monotonic, recovery: float = 0.01) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        self._configured = float(limit)
        self._limit = float(limit)
        self._step = max(0.01, limit * recovery)
        self._clock = clock
        self._in_flight = 0
        self._last_decrease: float | None = None
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []

    @property
    def limit(self) -> int:
        """Requests allowed in flight now (after any 429 decreases)."""
        return max(1, int(self._limit))

    @property
    def configured(self) -> int:
        return int(self._configured)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def acquire(self, priority: int, seq: int) -> None:
        if self._in_flight < self.limit and not self._pending():
            self._in_flight += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (priority, seq, fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot came just as we were cancelled: give it back
            raise

    def release(self) -> None:
        self._in_flight -= 1
        self._wake()

    def on_limited(self) -> None:
        now = self._clock()
        if self._last_decrease is not None and now - self._last_decrease < DECREASE_INTERVAL:
            return
        self._last_decrease = now
        self._limit = max(1.0, self._limit * 0.5)

    def on_success(self) -> None:
        if self._limit < self._configured:
            self._limit = min(self._configured, self._limit + self._step)
            self._wake()

    def _pending(self) -> bool:
        heap = self._heap
        while heap and heap[0][2].done():
            heapq.heappop(heap)
        return bool(heap)

    def _wake(self) -> None:
        while self._in_flight < self.limit and self._pending():
            _, _, fut = heapq.heappop(self._heap)
            self._in_flight += 1
            fut.set_result(None)

    def __repr__(self) -> str:
        return f"ConcurrencyCap({self._in_flight}/{self.limit}, configured={self.configured})"


@dataclass(frozen=True, slots=True)
class Operation:
    """One named API operation (`GET /v1/events`) and the limiters of its own."""

    name: str
    bucket: RateBudget
    slots: ConcurrencyCap
    files: RateBudget | None  # the Files read or write limit, for /v1/files*


class Limits:
    """Every limiter one Stripe account has, as one client sees them.

    A request counts against the global rate, its operation's rate (each `METHOD template`,
    e.g. `GET /v1/events` or `GET /v1/charges/{id}`), the Files read or write rate for
    `/v1/files*`, the global concurrency cap and its operation's. `admit` takes a token from
    every bucket (the global one last, so no global token waits on a busy operation) and then
    a slot of each cap, all at the request's priority, and holds the slots for the exchange.

    `on_rate_limited` adapts the limiter `Stripe-Rate-Limited-Reason` names, and only that
    one: an endpoint-rate 429 on `/v1/events` leaves the global rate and `/v2/core/events`
    alone. A 429 without the header is taken as global-rate (the cautious reading);
    resource-specific slows the most specific bucket the request used.
    """

    def __init__(
        self,
        *,
        rate: float,
        endpoint_rate: float,
        files_rate: float,
        concurrency: int,
        endpoint_concurrency: int,
        global_budget: RateBudget | None = None,
        clock: Clock = monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._global = (
            global_budget
            if global_budget is not None
            else RateBudget(rate, clock=clock, sleep=sleep)
        )
        self._endpoint_rate = float(endpoint_rate)
        self._endpoint_concurrency = int(endpoint_concurrency)
        self._files_read = self._bucket(files_rate)
        self._files_write = self._bucket(files_rate)
        self._slots = ConcurrencyCap(concurrency, clock=clock)
        self._ops: dict[str, Operation] = {}
        self._arrivals = itertools.count()

    @classmethod
    def from_config(cls, config: StripeConfig, *, budget: RateBudget | None = None) -> Limits:
        """Stripe's documented limits, or the config's: a global rate of 100/s live and 25/s
        in a sandbox unless set, per operation, Files and concurrency as configured.
        `budget`, when given, is the global bucket, and the others run on its clock."""
        return cls(
            rate=config.effective_rate_limit,
            endpoint_rate=config.endpoint_rate_limit,
            files_rate=config.files_rate_limit,
            concurrency=config.concurrency_limit,
            endpoint_concurrency=config.endpoint_concurrency_limit,
            global_budget=budget,
            clock=budget.clock if budget is not None else monotonic,
            sleep=budget.sleep if budget is not None else asyncio.sleep,
        )

    @property
    def global_budget(self) -> RateBudget:
        return self._global

    @property
    def global_slots(self) -> ConcurrencyCap:
        return self._slots

    @property
    def files_read(self) -> RateBudget:
        return self._files_read

    def operation(self, method: str, endpoint: str) -> Operation:
        """The limiters of `METHOD endpoint` (an `endpoint_template`), made on first use."""
        name = f"{method.upper()} {endpoint}"
        op = self._ops.get(name)
        if op is None:
            files = None
            if endpoint.startswith(FILES_PREFIX):
                files = self._files_read if method.upper() == "GET" else self._files_write
            op = Operation(
                name,
                self._bucket(self._endpoint_rate),
                ConcurrencyCap(self._endpoint_concurrency, clock=self._clock),
                files,
            )
            self._ops[name] = op
        return op

    @asynccontextmanager
    async def admit(
        self,
        op: Operation,
        priority: int = Priority.TAIL,
        extra: Sequence[RateBudget] = (),
    ) -> AsyncIterator[None]:
        """Waits for a token of every bucket `op` counts against (and of each `extra` cap,
        first) and a slot of each concurrency cap; holds the slots until the block ends.
        An `extra` cap with a reserve (`RateBudget.reserve`, at most one) may lift the
        request's priority for every limiter after it (`RateBudget.lifting`)."""
        reserved: RateBudget | None = None
        for budget in extra:
            await budget.acquire(priority=priority)
            if budget.reserved:
                reserved = budget

        async def rates(at: int) -> None:
            await op.bucket.acquire(priority=at)
            if op.files is not None:
                await op.files.acquire(priority=at)
            await self._global.acquire(priority=at)

        if reserved is None:
            await rates(priority)
        else:
            priority = await reserved.lifting(rates, priority)
        seq = next(self._arrivals)
        await op.slots.acquire(priority, seq)
        try:
            await self._slots.acquire(priority, seq)
        except BaseException:
            op.slots.release()
            raise
        try:
            yield
        finally:
            self._slots.release()
            op.slots.release()

    def has_room(self, op: Operation) -> bool:
        """True when neither `op`'s rate nor the global rate binds right now (see
        `RateBudget.has_room`): one more request in parallel would not wait for a token."""
        return op.bucket.has_room() and self._global.has_room()

    def on_success(self, op: Operation) -> None:
        """A request went through: every limiter it used creeps back towards its limit."""
        self._global.on_success()
        op.bucket.on_success()
        if op.files is not None:
            op.files.on_success()
        self._slots.on_success()
        op.slots.on_success()

    def on_rate_limited(self, op: Operation, reason: str | None) -> str:
        """Adapts the one limiter a 429's `Stripe-Rate-Limited-Reason` names; returns which
        reason was acted on (an absent or unknown one counts as global-rate)."""
        reason = (reason or "").strip().lower()
        if reason == ENDPOINT_RATE:
            op.bucket.on_rate_limited()
        elif reason == GLOBAL_CONCURRENCY:
            self._slots.on_limited()
        elif reason == ENDPOINT_CONCURRENCY:
            op.slots.on_limited()
        elif reason == RESOURCE_SPECIFIC:
            (op.files or op.bucket).on_rate_limited()
        else:
            if reason and reason != GLOBAL_RATE:
                log.warning(
                    "unknown Stripe-Rate-Limited-Reason: taken as global-rate", reason=reason
                )
            reason = GLOBAL_RATE
            self._global.on_rate_limited()
        return reason

    def _bucket(self, rate: float) -> RateBudget:
        return RateBudget(rate, clock=self._clock, sleep=self._sleep, report=False)

    def __repr__(self) -> str:
        return (
            f"Limits(global={self._global.rate:g}/s, endpoint={self._endpoint_rate:g}/s, "
            f"concurrency={self._slots.limit}, operations={len(self._ops)})"
        )


__all__ = [
    "ENDPOINT_CONCURRENCY",
    "ENDPOINT_RATE",
    "GLOBAL_CONCURRENCY",
    "GLOBAL_RATE",
    "REASONS",
    "RESOURCE_SPECIFIC",
    "ConcurrencyCap",
    "Limits",
    "Operation",
    "Priority",
    "fair_key",
]
