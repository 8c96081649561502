"""Hydration of thin events: bounded, retried, coalesced fetches of each event's related object."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any

from ingestor.clock import wall_ms
from ingestor.errors import ClosedError, IngestorError, StripeNotFound
from ingestor.events import Event, Hydration
from ingestor.metrics import HYDRATION_REQUESTS

Fetch = Callable[[str, str | None], Awaitable[dict[str, Any]]]
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


class Hydrator:
    """Fetches related objects for thin events; use as `async with Hydrator(...) as h:`.

    Fetches run as tasks of the hydrator's own task group, so a fetch shared by several events
    survives one waiter being cancelled and no task outlives the `async with` block. At most
    `concurrency` fetch calls are in flight; backoff sleeps do not hold a slot.
    """

    def __init__(
        self,
        fetch: Fetch,
        *,
        concurrency: int,
        max_attempts: int,
        backoff_base: float = 0.2,
        backoff_max: float = 5.0,
        clock_ms: Callable[[], int] = wall_ms,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if concurrency < 1 or max_attempts < 1:
            raise ValueError("concurrency and max_attempts must be >= 1")
        self._fetch = fetch
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._clock_ms = clock_ms
        self._sleep = sleep
        self._jitter = jitter
        self._slots = asyncio.Semaphore(concurrency)
        self._group: asyncio.TaskGroup | None = None
        # (url, account) -> (wall-clock ms the fetch started, its task)
        self._inflight: dict[tuple[str, str | None], tuple[int, asyncio.Task[Hydration]]] = {}

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

    async def hydrate(self, event: Event) -> Hydration:
        """The related object of `event` as fetched no earlier than the event was created."""
        if event.related_url is None:
            return Hydration("ok", self._clock_ms(), None)
        if self._group is None:
            raise ClosedError("Hydrator used outside its `async with` block")
        key = (event.related_url, event.account)
        current = self._inflight.get(key)
        # A fetch that started before the event was created may return the object's state from
        # before the change the event reports; only a fetch started since then can be shared.
        if current is not None and current[0] >= event.created_ms:
            HYDRATION_REQUESTS.labels(result="coalesced").inc()
            task = current[1]
        else:
            task = self._group.create_task(self._fetch_with_retries(*key))
            entry = (self._clock_ms(), task)
            self._inflight[key] = entry
            task.add_done_callback(lambda _t: self._forget(key, entry))
        # Shielded: a cancelled waiter must not cancel a fetch other events are waiting on.
        return await asyncio.shield(task)

    async def hydrate_all(self, events: Iterable[Event]) -> list[Hydration]:
        """Hydrations in the order of `events`; one failing event never blocks the others."""
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self.hydrate(event)) for event in events]
        return [task.result() for task in tasks]

    def _forget(
        self, key: tuple[str, str | None], entry: tuple[int, asyncio.Task[Hydration]]
    ) -> None:
        if self._inflight.get(key) is entry:
            del self._inflight[key]

    async def _fetch_with_retries(self, url: str, account: str | None) -> Hydration:
        attempt = 1
        while True:
            try:
                async with self._slots:
                    obj = await self._fetch(url, account)
            except StripeNotFound:
                HYDRATION_REQUESTS.labels(result="not_found").inc()
                return Hydration("not_found", self._clock_ms())
            except Exception as exc:  # every failure becomes a Hydration: one poison event
                retriable = isinstance(exc, IngestorError) and exc.retriable
                if not retriable or attempt >= self._max_attempts:
                    HYDRATION_REQUESTS.labels(result="failed").inc()
                    error = describe_error(exc)
                    if retriable:
                        error = f"gave up after {attempt} attempts: {error}"
                    return Hydration("failed", self._clock_ms(), None, error)
                HYDRATION_REQUESTS.labels(result="retry").inc()
                await self._sleep(self._backoff(attempt))
                attempt += 1
                continue
            HYDRATION_REQUESTS.labels(result="ok").inc()
            return Hydration("ok", self._clock_ms(), obj)

    def _backoff(self, attempt: int) -> float:
        # Exponential with "equal jitter": at least half the step, so retries still spread out.
        step = min(self._backoff_max, self._backoff_base * 2.0 ** (attempt - 1))
        return step / 2 + self._jitter() * step / 2
