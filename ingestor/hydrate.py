"""Hydration of thin events: bounded, retried, coalesced fetches of each event's related object."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Literal

import orjson

from ingestor.clock import wall_ms
from ingestor.config import HydrateConfig
from ingestor.errors import ClosedError, IngestorError, StripeNotFound
from ingestor.events import Event, Hydration
from ingestor.limits import ConcurrencyCap, Priority
from ingestor.metrics import HYDRATION_REQUESTS
from ingestor.retry import Failure, RetryPolicy
from ingestor.stripe_api import StripeClient

Fetch = Callable[[str, str | None, int], Awaitable[dict[str, Any]]]
"""fetch(url, account, priority): the related object; `priority` (`ingestor.limits.Priority`)
orders the request among those waiting for Stripe's limiters."""
Key = tuple[str, str | None]
MAX_ERROR_CHARS = 300


def describe_error(exc: BaseException) -> str:
    """One line: error class, message and Stripe request id when known."""
    if isinstance(exc, IngestorError):
        text = f"{type(exc).__name__}: {exc.message}"
        if exc.request_id:
            text += f" (request {exc.request_id})"
    else:
        text = f"{type(exc).__name__}: {exc}"
    line = " ".join(text.split())
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."


class _Flight:
    """One fetch of one object, as other events see it when deciding to share it."""

    __slots__ = ("priority", "sent")

    def __init__(self, priority: int) -> None:
        # Tick of the hydrator's logical clock when the first attempt got its slot (the
        # request goes out at or after it); None while the fetch is still queued.
        self.sent: int | None = None
        self.priority = priority

    def serves(self, known: int, priority: int) -> bool:
        """Whether an event known at tick `known`, hydrated at `priority`, may share this
        fetch: one already sent must have left after `known`; one still queued must not be
        queued at a worse priority (the event would wait behind the same backlog)."""
        if self.sent is not None:
            return self.sent > known
        return self.priority <= priority


class _Done:
    """A completed fetch kept for events that were known before its request went out."""

    __slots__ = ("hydration", "sent", "size")

    def __init__(self, hydration: Hydration, sent: int, size: int) -> None:
        self.hydration = hydration
        self.sent = sent
        self.size = size


class FetchCache:
    """Completed fetches by (url, account), least recently used out first, bounded in entries
    and in bytes (an object's size as JSON; the parsed dict takes a few times that).

    Keeps only the newest-sent fetch per key: it serves every event the older ones could.
    """

    def __init__(self, *, max_entries: int, max_bytes: int) -> None:
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("max_entries and max_bytes must be >= 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[Key, _Done] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key, known: int) -> Hydration | None:
        """The kept result for `key` if its request went out after tick `known`."""
        done = self._entries.get(key)
        if done is None or done.sent <= known:
            return None
        self._entries.move_to_end(key)
        return done.hydration

    def put(self, key: Key, hydration: Hydration, sent: int) -> None:
        """Keeps `hydration` (fetched by a request that went out at tick `sent`), evicting the
        least recently used entries past either bound; an object larger than the whole byte
        bound is not kept at all."""
        old = self._entries.get(key)
        if old is not None and old.sent >= sent:
            return  # a fetch sent later already answered: it serves everyone this one could
        obj = hydration.related_object
        size = len(key[0]) + (len(orjson.dumps(obj)) if obj is not None else 0)
        if size > self.max_bytes or self.max_entries == 0:
            return
        if old is not None:
            del self._entries[key]
            self.bytes -= old.size
        self._entries[key] = _Done(hydration, sent, size)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.size


class Hydrator:
    """Fetches related objects for thin events; use as `async with Hydrator(...) as h:`.

    Fetches run as tasks of the hydrator's own task group, so a fetch shared by several events
    survives one waiter being cancelled and no task outlives the `async with` block. At most
    `concurrency` fetch calls are in flight; backoff sleeps do not hold a slot. Retries follow
    `ingestor.retry` (Stripe-Should-Retry obeyed). One fetch takes at most `deadline_seconds`
    from its first attempt, retries and backoff included; then its events get
    `Hydration("failed")`, so a stuck object cannot hold its stream. The deadline starts at
    the first attempt, not at the call: queueing behind `concurrency` in a burst never fails
    a healthy event.

    Sharing, and why a result is never older than its event: Stripe lists an event only once
    the change it reports is done, so an object read by a request sent after the event was
    listed reflects at least that change. Each event therefore carries `known`, a tick of the
    hydrator's own logical clock taken after it was listed (`stamp()`, or at the call), and
    every fetch records `sent`, the tick when its request got its slot. An event uses a fetch
    only if `sent > known`: a fetch in flight (queued ones too: they are sent later still), or
    a completed one kept in the `FetchCache` (bounded in entries and bytes; ok and not_found
    results only, so a failure is fetched again). Both stamps come from one clock, so no
    comparison with Stripe's `created` (another machine's clock) is ever made. A reader that
    lists ahead and hydrates later (`hydrate_all(events, known=...)`) lets an object's later
    events, listed before its first fetch went out, share that fetch even after it finished.
    """

    def __init__(
        self,
        fetch: Fetch,
        *,
        concurrency: int,
        max_attempts: int,
        deadline_seconds: float = 60.0,
        backoff_base: float = 0.2,
        backoff_max: float = 5.0,
        clock_ms: Callable[[], int] = wall_ms,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        cache_entries: int = 0,
        cache_bytes: int = 0,
    ) -> None:
        if concurrency < 1 or max_attempts < 1:
            raise ValueError("concurrency and max_attempts must be >= 1")
        if not deadline_seconds > 0:
            raise ValueError("deadline_seconds must be positive")
        self._fetch = fetch
        self._deadline = deadline_seconds
        # "Equal jitter": at least half of each step, so a hydration's retries still spread out.
        self._policy = RetryPolicy(
            "hydration",
            attempts=max_attempts,
            base=backoff_base,
            cap=backoff_max,
            jitter_floor=0.5,
            api=True,
            sleep=sleep,
            rng=jitter,
        )
        self._clock_ms = clock_ms
        # Served by priority: a sweep's late event is not queued behind a catch-up's backlog.
        self._slots = ConcurrencyCap(concurrency)
        self._arrivals = itertools.count()
        self._group: asyncio.TaskGroup | None = None
        # Our own logical clock: strictly increasing, so "before" and "after" never tie (a
        # loop whose time stands still, as in simulated time, would tie every stamp).
        self._ticks = itertools.count()
        self._inflight: dict[Key, tuple[_Flight, asyncio.Task[Hydration]]] = {}
        self.cache = FetchCache(max_entries=cache_entries, max_bytes=cache_bytes)

    @classmethod
    def for_client(
        cls,
        client: StripeClient,
        config: HydrateConfig,
        *,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> Hydrator:
        """A hydrator fetching through `client`, within `config.budget_share` of its budget.

        The share is a sub-budget acquired before the shared one (`extra_budgets`), so a burst
        of thin events can use at most that fraction of the rate and the rest is left to the
        polls. Each fetch is one request (`max_retries=0`): the hydrator retries, once. Fetches
        wait at the priority their events were given (`hydrate_all`): hydration priority
        (after tail polls, before sweeps and backfill) unless they are a sweep's late events.
        """
        share = client.budget.share(config.budget_share)

        async def fetch(url: str, account: str | None, priority: int) -> dict[str, Any]:
            api: Literal["v1", "v2"] = "v2" if "/v2/" in url else "v1"
            body: dict[str, Any] = await client.request_json(
                "GET",
                url,
                account=account,
                api=api,
                extra_budgets=(share,),
                priority=priority,
                max_retries=0,
            )
            return body

        return cls(
            fetch,
            concurrency=config.concurrency,
            max_attempts=config.max_attempts,
            deadline_seconds=config.deadline_seconds,
            sleep=sleep,
            cache_entries=config.cache_entries,
            cache_bytes=config.cache_bytes,
        )

    async def __aenter__(self) -> Hydrator:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        group, self._group = self._group, None
        assert group is not None
        await group.__aexit__(exc_type, exc, tb)

    async def hydrate(self, event: Event, priority: int = Priority.HYDRATE) -> Hydration:
        """The related object of `event`, fetched by a request sent after this call began."""
        return await self._hydrate(event, next(self._ticks), priority)

    def stamp(self) -> int:
        """A tick of the hydrator's clock, to take just after events were listed and pass as
        `hydrate_all(..., known=)` when they are hydrated later."""
        return next(self._ticks)

    async def hydrate_all(
        self,
        events: Iterable[Event],
        known: int | None = None,
        priority: int = Priority.HYDRATE,
    ) -> list[Hydration]:
        """Hydrations in the order of `events`; one failing event never blocks the others.

        `known` is a `stamp()` taken after every one of `events` was listed (default: now).
        Each result comes from a request sent after that tick; an earlier tick lets more
        events share fetches, a later one is merely more cautious, never wrong. `priority`
        orders the fetches among those waiting for a slot and for Stripe's limiters: a
        sweep's few late events go ahead of a catch-up's backlog (`tail.SWEEP_HYDRATION`).

        Needs no lock and may run concurrently from several readers of one stream (and hold no
        stream lock while it runs): the shared state is touched only between awaits on the
        event loop, each call's results depend on its own events only, and a fetch that
        several calls share is shielded from any one caller's cancellation. So hydrating
        after the events were listed, outside any lock, is as safe as inside it.
        """
        if known is None:
            known = next(self._ticks)
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self._hydrate(event, known, priority)) for event in events]
        return [task.result() for task in tasks]

    async def _hydrate(self, event: Event, known: int, priority: int) -> Hydration:
        if event.related_url is None:
            return Hydration("ok", self._clock_ms(), None)
        if self._group is None:
            raise ClosedError("Hydrator used outside its `async with` block")
        key = (event.related_url, event.account)
        current = self._inflight.get(key)
        # Shared only if the fetch's request goes out after the event was known to us (it
        # had been listed by the time `known` was taken). Stripe lists an event once the
        # change it reports is done, so an object read after that reflects at least the
        # event's state: sharing never gives an event an object older than itself. Both
        # stamps come from our own clock; Stripe's `created` is another machine's clock and
        # says nothing about when our request left.
        # The newest eligible fetch first: one in flight is newer than any kept one.
        if current is not None and current[0].serves(known, priority):
            HYDRATION_REQUESTS.labels(result="coalesced").inc()
            task = current[1]
        elif (kept := self.cache.get(key, known)) is not None:
            HYDRATION_REQUESTS.labels(result="cached").inc()
            return kept
        else:
            flight = _Flight(priority)
            task = self._group.create_task(self._fetch_with_retries(*key, flight))
            entry = (flight, task)
            self._inflight[key] = entry
            task.add_done_callback(lambda _t: self._forget(key, entry))
        # Shielded: a cancelled waiter must not cancel a fetch other events are waiting on.
        return await asyncio.shield(task)

    def _forget(self, key: Key, entry: tuple[_Flight, asyncio.Task[Hydration]]) -> None:
        if self._inflight.get(key) is entry:
            del self._inflight[key]
        flight, task = entry
        if task.cancelled() or task.exception() is not None or flight.sent is None:
            return
        hydration = task.result()
        # A failure is not kept: the next event that needs the object tries again.
        if hydration.status in ("ok", "not_found"):
            self.cache.put(key, hydration, flight.sent)

    async def _fetch_with_retries(
        self, url: str, account: str | None, flight: _Flight
    ) -> Hydration:
        loop = asyncio.get_running_loop()
        attempts = 0

        async def attempt() -> dict[str, Any]:
            nonlocal attempts
            await self._slots.acquire(flight.priority, next(self._arrivals))
            try:
                if flight.sent is None:
                    flight.sent = next(self._ticks)
                    deadline.reschedule(loop.time() + self._deadline)
                attempts += 1
                return await self._fetch(url, account, flight.priority)
            finally:
                self._slots.release()

        try:
            async with asyncio.timeout(None) as deadline:
                obj = await self._policy.call(attempt, on_failure=self._on_failure)
        except Exception as exc:  # every failure becomes a Hydration: one poison event
            if deadline.expired():
                HYDRATION_REQUESTS.labels(result="failed").inc()
                error = (
                    f"no answer within the {self._deadline:g} s hydration deadline"
                    f" ({attempts} attempts)"
                )
                return Hydration("failed", self._clock_ms(), None, error)
            if isinstance(exc, StripeNotFound):
                HYDRATION_REQUESTS.labels(result="not_found").inc()
                return Hydration("not_found", self._clock_ms())
            HYDRATION_REQUESTS.labels(result="failed").inc()
            error = describe_error(exc)
            if self._policy.retriable(exc):
                error = f"gave up after {attempts} attempts: {error}"
            return Hydration("failed", self._clock_ms(), None, error)
        HYDRATION_REQUESTS.labels(result="ok").inc()
        return Hydration("ok", self._clock_ms(), obj)

    def _on_failure(self, failure: Failure) -> None:
        if failure.will_retry:
            HYDRATION_REQUESTS.labels(result="retry").inc()
        if not isinstance(failure.cause, IngestorError):
            # The Stripe client reports its own failures; anything else is news.
            self._policy.log_failure(failure)
