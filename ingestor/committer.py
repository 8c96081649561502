"""The committer: batches of every stream into Kafka transactions, one at a time, in order."""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from ingestor import clock, metrics
from ingestor.errors import KafkaUnavailable
from ingestor.events import Record, Stream
from ingestor.health import Readiness
from ingestor.log import TransactionalLog
from ingestor.route import IngestMode
from ingestor.stream import StreamState

log = structlog.get_logger(__name__)


def now_ms() -> int:
    return clock.wall_ms()


@dataclass(slots=True)
class Routed:
    """An event turned into its Kafka records, keeping what metrics and ordering need."""

    id: str
    type: str
    api: str
    created_ms: int
    records: list[Record]
    dlq: bool = False


@dataclass(slots=True)
class Batch:
    """Records of one stream plus that stream's state as of them: one commit unit."""

    stream: Stream
    items: list[Routed]
    state: dict[bytes, bytes | None]
    mode: IngestMode


class CommitQueue:
    """Bounded FIFO between readers and the committer.

    `put` waits for room *before* building the batch, so a batch's state snapshot is taken
    and queued in one step: a reader cancelled while waiting leaves no half-taken snapshot.

    Batches are numbered as they are queued and committed in that order, so "everything
    queued up to batch n is committed" is one integer (`committed`): a webhook delivery waits
    on it (`wait_committed`) to be answered only after its event is in Kafka. `close` ends
    the generation: later puts are refused and waiters learn that their batch will never
    commit (this generation's transactions are over; the next one rebuilds from Kafka).
    """

    def __init__(self, max_items: int) -> None:
        self._max = max_items
        self._batches: list[Batch] = []
        self._items = 0
        self._unfinished = 0
        self._cond = asyncio.Condition()
        self.queued = 0  # number of the last batch queued
        self.committed = 0  # every batch up to this number is committed
        self.closed = False
        self._waiters: list[tuple[int, int, asyncio.Future[bool]]] = []
        self._waiter_ids = itertools.count()

    async def put(self, build: Callable[[], Batch | None]) -> int | None:
        """Queues the batch `build` makes; its number, or None when there was nothing to
        queue or the queue is closed (then `build` is not called)."""
        async with self._cond:
            await self._cond.wait_for(lambda: self._items < self._max or self.closed)
            if self.closed:
                return None
            batch = build()
            if batch is None:
                return None
            self._batches.append(batch)
            self._items += len(batch.items)
            self._unfinished += 1
            self.queued += 1
            self._cond.notify_all()
            return self.queued

    async def wait_committed(self, seq: int) -> bool:
        """Waits until batch `seq` (and all before it) is committed: True; False when the
        queue closes first (its transaction failed or never ran).

        One future per waiter in a heap by number, resolved as commits pass it: hundreds of
        deliveries waiting cost nothing per queue operation (a condition would wake them all
        on every put, take and commit).
        """
        if self.committed >= seq:
            return True
        if self.closed:
            return False
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (seq, next(self._waiter_ids), done))
        return await done

    def _wake_committed(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.committed:
            _, _, done = heapq.heappop(self._waiters)
            if not done.done():
                done.set_result(True)

    async def close(self) -> None:
        """Refuses further batches and wakes every waiter; safe to call twice."""
        async with self._cond:
            self.closed = True
            self._cond.notify_all()
        waiters, self._waiters = self._waiters, []
        for _, _, done in waiters:
            if not done.done():
                done.set_result(False)

    async def take(self, max_items: int) -> list[Batch]:
        """Waits for at least one batch; returns whole batches up to about `max_items`."""
        async with self._cond:
            await self._cond.wait_for(lambda: bool(self._batches))
            out = [self._batches.pop(0)]
            count = len(out[0].items)
            while self._batches and count + len(self._batches[0].items) <= max_items:
                out.append(self._batches.pop(0))
                count += len(out[-1].items)
            self._items -= count
            self._cond.notify_all()
            return out

    async def done(self, n: int) -> None:
        """Records that the next `n` batches taken are committed."""
        async with self._cond:
            self._unfinished -= n
            self.committed += n
            self._cond.notify_all()
        self._wake_committed()

    async def join(self) -> None:
        """Waits until every batch put so far has been committed."""
        async with self._cond:
            await self._cond.wait_for(lambda: self._unfinished == 0)


class Committer:
    """Takes whole batches off the queue and commits them, records plus state, as one
    transaction each time; a batch of a stream is committed only after the stream's earlier
    ones, so the newest committed state always matches what Kafka holds."""

    def __init__(
        self,
        queue: CommitQueue,
        sink: TransactionalLog,
        readiness: Readiness,
        runtimes: Mapping[Stream, StreamState],
        max_items: int,
    ) -> None:
        self._queue = queue
        self._sink = sink
        self._readiness = readiness
        self._runtimes = runtimes
        self._max_items = max_items

    async def run(self) -> None:
        """Commits queued batches until cancelled; raises KafkaUnavailable / Fenced."""
        max_items = self._max_items
        while True:
            batches = await self._queue.take(max_items)
            records = [r for b in batches for item in b.items for r in item.records]
            state: dict[bytes, bytes | None] = {}
            for b in batches:
                state.update(b.state)  # later snapshots of a stream supersede earlier ones
            started = clock.monotonic()
            try:
                result = await self._sink.commit_batch(records, state)
            except KafkaUnavailable:
                self._readiness.mark_kafka(False)
                raise
            self._readiness.mark_kafka(True)
            now = now_ms()
            events = 0
            dead = 0
            # Counted per (source, type) once per batch: a label lookup per event is CPU that
            # thousands of events a second can not spare.
            published: collections.Counter[tuple[str, str]] = collections.Counter()
            lag = metrics.EVENT_LAG
            for b in batches:
                for item in b.items:
                    events += 1
                    lag.observe(max(0.0, (now - item.created_ms) / 1000))
                    if item.dlq:
                        dead += 1
                    else:
                        published[item.api, item.type] += 1
                if b.mode == "backfill":
                    metrics.BACKFILL_EVENTS.inc(len(b.items))
            for (api, event_type), n in published.items():
                metrics.EVENTS_PUBLISHED.labels(source=api, type=event_type).inc(n)
            if dead:
                metrics.DLQ_EVENTS.labels(reason="hydration_failed").inc(dead)
            metrics.BATCH_EVENTS.observe(events)
            for p in {b.stream for b in batches}:
                rt = self._runtimes[p]
                if rt.watermark_ms is not None:
                    metrics.WATERMARK_AGE.labels(stream=p.key).set((now - rt.watermark_ms) / 1000)
            # A batch of only state (a backfill slice with no events) is routine: debug level.
            (log.info if events else log.debug)(
                "batch committed",
                events=events,
                records=len(records),
                dlq=result.dlq,
                streams=sorted({b.stream.key for b in batches}),
                ms=round((clock.monotonic() - started) * 1000, 1),
            )
            await self._queue.done(len(batches))
