"""An in-memory transactional log with Kafka's semantics, for simulations in simulated time.

Atomic commits of records plus state, abort, fencing by transactional id, a read_committed
restore with compaction that stops at each partition's last stable offset (an open transaction
holds it back), and hooks to inject unavailability, unknown outcomes and crashes.
"""

from __future__ import annotations

import asyncio
import bisect
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import msgspec

from ingestor import clock
from ingestor.config import KafkaConfig
from ingestor.errors import ClosedError, ConfigError, Fenced, KafkaUnavailable
from ingestor.events import Record
from ingestor.log import BatchResult
from ingestor.log.partition import CachingPartitioner
from ingestor.resource import AsyncResource
from ingestor.route import divert_oversized
from ingestor.shards import check_state_partitions

T = TypeVar("T")
CommitFault = Literal["unavailable", "unknown"]
# Compaction runs when a compacted topic holds this many records more than it has live keys:
# amortised, so a long simulation's state topic stays near its live size.
COMPACT_SLACK = 1024


class LogRecord(msgspec.Struct, frozen=True):
    """One committed record, as a read_committed consumer would see it (a Struct: one is made
    for every record a simulation publishes, ten times faster than a frozen dataclass)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int = 0


@dataclass(slots=True)
class _Topic:
    partitions: list[list[LogRecord]]
    next_offsets: list[int]
    compacted: bool
    # Compacted topics only: the latest value per key as of the last append (tombstones
    # removed), kept as records are appended, so a restore or a compaction check costs the
    # live size, not a scan of every record.
    live: dict[bytes, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class BrokerStats:
    """Counts for a simulation's summary."""

    commits: int = 0
    aborts: int = 0
    fenced: int = 0
    unavailable: int = 0
    unknown_outcomes: int = 0
    compactions: int = 0


class MemoryBroker:
    """The durable side of the in-memory log: topics, committed records and each transactional
    id's epoch. It outlives the writers (`MemoryLog`), as a Kafka cluster outlives processes:
    a simulated restart is a new `MemoryLog` on the same broker.

    `latency` is the simulated time each call to the broker takes (each is an await point, so
    a crash can land between a batch's records and its commit). With `keep_values=False` the
    values of non-compacted topics are not kept (headers, keys and offsets are), so a long
    simulation's memory stays bounded by what its invariant checks read. `num_partitions` is
    the broker's default partition count, for a config that leaves it to the broker.
    """

    def __init__(
        self, *, latency: float = 0.0, keep_values: bool = True, num_partitions: int = 6
    ) -> None:
        self.latency = latency
        self.num_partitions = num_partitions
        self.keep_values = keep_values
        self.stats = BrokerStats()
        self._topics: dict[str, _Topic] = {}
        self._epochs: dict[str, int] = {}
        # Each open transaction's first offset per (topic, partition) it wrote to, by
        # transactional id: what holds a partition's last stable offset back, as in Kafka.
        self._open: dict[str, dict[tuple[str, int], int]] = {}
        self._faults: deque[CommitFault] = deque()
        self._outage_until: float | None = None

    # --- fault injection ----------------------------------------------------------------------

    def fail_next_commit(self, kind: CommitFault) -> None:
        """The next commit fails: 'unavailable' raises KafkaUnavailable and commits nothing;
        'unknown' commits the transaction, then raises KafkaUnavailable (outcome unknown to the
        caller). Queued: several calls fail several commits, in order."""
        if kind not in ("unavailable", "unknown"):
            raise ValueError(f"kind must be 'unavailable' or 'unknown', got {kind!r}")
        self._faults.append(kind)

    def outage(self, until_monotonic: float) -> None:
        """The broker is unreachable until `clock.monotonic()` reaches `until_monotonic`: every
        call made meanwhile raises KafkaUnavailable, after waiting as a real client would (its
        request timeout, or until the outage ends, whichever is sooner)."""
        self._outage_until = until_monotonic

    def outage_left(self) -> float:
        """Seconds of outage left (0 when the broker is reachable)."""
        if self._outage_until is None:
            return 0.0
        left = self._outage_until - clock.monotonic()
        if left <= 0:
            self._outage_until = None
            return 0.0
        return left

    # --- reading ------------------------------------------------------------------------------

    def topics(self) -> list[str]:
        return sorted(self._topics)

    def partition_count(self, topic: str) -> int:
        return len(self._topics[topic].partitions)

    def last_stable_offset(self, topic: str, partition: int) -> int:
        """Where a read_committed reader of the partition stops: the first offset of the
        oldest transaction still open on it, else the partition's end."""
        t = self._topics[topic]
        firsts = [o[(topic, partition)] for o in self._open.values() if (topic, partition) in o]
        return min(firsts, default=t.next_offsets[partition])

    def read_committed(self, topic: str) -> list[LogRecord]:
        """Every committed record of `topic`, by (partition, offset); [] for no such topic."""
        t = self._topics.get(topic)
        return [] if t is None else [r for part in t.partitions for r in part]

    def committed_records(self, topic_prefix: str = "") -> list[LogRecord]:
        """Committed records of every topic whose name starts with `topic_prefix` (the state
        topic too, when it matches), by (topic, partition, offset)."""
        names = [name for name in self.topics() if name.startswith(topic_prefix)]
        return [r for name in names for r in self.read_committed(name)]

    def latest_per_key(
        self, topic: str, partitions: Sequence[int] | None = None
    ) -> dict[bytes, bytes]:
        """What a read_committed restore of a compacted topic (or of some of its partitions)
        yields: the last value per key, a tombstone (None) deleting it, read up to each
        partition's last stable offset."""
        state: dict[bytes, bytes] = {}
        t = self._topics.get(topic)
        if t is None:
            return state
        wanted = range(len(t.partitions)) if partitions is None else partitions
        for partition in wanted:
            self._latest_into(state, topic, partition)
        return state

    def _latest_into(self, state: dict[bytes, bytes], topic: str, partition: int) -> None:
        stable = self.last_stable_offset(topic, partition)
        for record in self._topics[topic].partitions[partition]:
            if record.key is None or record.offset >= stable:
                continue
            if record.value is None:
                state.pop(record.key, None)
            else:
                state[record.key] = record.value

    def epoch(self, transactional_id: str) -> int:
        """The current producer epoch of a transactional id (0: never initialised)."""
        return self._epochs.get(transactional_id, 0)

    # --- writer side (MemoryLog) --------------------------------------------------------------

    def _create_topic(self, name: str, partitions: int, *, compacted: bool) -> None:
        if name not in self._topics:
            self._topics[name] = _Topic(
                [[] for _ in range(partitions)], [0] * partitions, compacted
            )

    def _init_producer(self, transactional_id: str) -> int:
        # Kafka's InitProducerId: a new epoch, which fences every older producer of the id
        # and aborts its open transaction (so the partitions' last stable offsets move on).
        self._open.pop(transactional_id, None)
        epoch = self._epochs.get(transactional_id, 0) + 1
        self._epochs[transactional_id] = epoch
        return epoch

    def _take_fault(self) -> CommitFault | None:
        return self._faults.popleft() if self._faults else None

    def _reserve(self, transactional_id: str, topic: str, partition: int) -> int:
        """The offset of a record sent in an open transaction: taken at once (as Kafka appends
        it at once), visible only when the transaction commits."""
        t = self._topics[topic]
        offset = t.next_offsets[partition]
        t.next_offsets[partition] = offset + 1
        self._open.setdefault(transactional_id, {}).setdefault((topic, partition), offset)
        return offset

    def _end(self, transactional_id: str) -> None:
        """The transaction of `transactional_id` committed or aborted."""
        self._open.pop(transactional_id, None)

    def _append(self, records: Sequence[tuple[str, int, int, Record | LogRecord]]) -> None:
        """Makes a whole transaction visible at once, each record at its reserved offset."""
        now = clock.wall_ms()
        touched: set[str] = set()
        for topic, partition, offset, r in records:
            t = self._topics[topic]
            value = r.value if (t.compacted or self.keep_values) else b""
            record = LogRecord(topic, partition, offset, r.key, value, tuple(r.headers), now)
            part = t.partitions[partition]
            if part and part[-1].offset > offset:
                # A transaction that opened earlier committed later: its offsets come first.
                bisect.insort(part, record, key=lambda x: x.offset)
            else:
                part.append(record)
            if t.compacted and r.key is not None:
                if r.value is None:
                    t.live.pop(r.key, None)
                else:
                    t.live[r.key] = r.value
            touched.add(topic)
        for topic in touched:
            if self._topics[topic].compacted:
                self._maybe_compact(topic)

    def _maybe_compact(self, topic: str) -> None:
        t = self._topics[topic]
        total = sum(len(p) for p in t.partitions)
        if total <= len(t.live) + COMPACT_SLACK:
            return
        self.compact(topic)

    def compact(self, topic: str) -> None:
        """Log compaction: keeps only each key's latest record (offsets unchanged) and drops
        keys whose latest record is a tombstone; what a restore reads stays the same."""
        t = self._topics[topic]
        for index, part in enumerate(t.partitions):
            # As Kafka's cleaner: nothing at or past the last stable offset is cleaned, so a
            # record an open transaction still hides never removes the stable one before it.
            stable = self.last_stable_offset(topic, index)
            last: dict[bytes | None, int] = {}
            for i, record in enumerate(part):
                if record.offset < stable:
                    last[record.key] = i
            t.partitions[index] = [
                r
                for i, r in enumerate(part)
                if r.offset >= stable or (last[r.key] == i and r.value is not None)
            ]
        self.stats.compactions += 1


@dataclass(slots=True)
class MemoryTransaction:
    """An open transaction of one writer: records take their offsets when sent (holding back
    those partitions' last stable offsets) and become visible at `commit`."""

    _log: MemoryLog
    _epoch: int
    sent: list[tuple[str, int, int, Record | LogRecord]] = field(default_factory=list)
    done: bool = False

    def send(self, records: Iterable[Record]) -> None:
        self._check_open()
        log = self._log
        for r in records:
            if r.topic not in log._broker._topics:
                log._create_topics([r.topic])
            partition = log._partition(r.topic, r.key)
            offset = log._broker._reserve(log._txn_id, r.topic, partition)
            self.sent.append((r.topic, partition, offset, r))

    def send_state(self, state: Mapping[bytes, bytes | None]) -> None:
        """State records go to the shard's own partition of the state topic (not by key)."""
        self._check_open()
        log = self._log
        topic, partition = log._config.state_topic, log._config.shard
        log._create_topics([topic])
        for key, value in state.items():
            offset = log._broker._reserve(log._txn_id, topic, partition)
            self.sent.append((topic, partition, offset, LogRecord(topic, 0, 0, key, value)))

    def abort(self) -> None:
        """Drops everything sent in this transaction; nothing of it is ever visible."""
        if not self.done:
            self.done = True
            broker = self._log._broker
            broker.stats.aborts += 1
            if broker.epoch(self._log._txn_id) == self._epoch:
                broker._end(self._log._txn_id)
            if self._log._txn is self:
                self._log._txn = None

    async def commit(self) -> None:
        """Makes the records and the state visible together, or raises with nothing visible
        (except the 'unknown' fault: committed, and KafkaUnavailable raised anyway)."""
        self._check_open()
        log, broker = self._log, self._log._broker
        try:
            await log._reach()
            self._check_open()  # a crash while the commit was on its way
            if broker.epoch(log._txn_id) != self._epoch:
                broker.stats.fenced += 1
                raise log._fence()
            fault = broker._take_fault()
            if fault == "unavailable":
                broker.stats.unavailable += 1
                raise KafkaUnavailable("Kafka failed while committing a batch (injected)")
            broker._append(self.sent)
            broker._end(log._txn_id)
            self.done = True
            log._txn = None
            broker.stats.commits += 1
            if fault == "unknown":
                broker.stats.unknown_outcomes += 1
                raise KafkaUnavailable(
                    "Kafka did not confirm the commit (injected): outcome unknown"
                )
        finally:
            if not self.done:
                self.abort()

    def _check_open(self) -> None:
        if self.done:
            raise KafkaUnavailable("the transaction is no longer open (aborted or committed)")


class MemoryLog(AsyncResource):
    """One process's writer onto a `MemoryBroker`: the `TransactionalLog` the pipeline uses,
    with the Kafka sink's contract (see `ingestor.log.TransactionalLog`).

    Like the Kafka sink, the producer is initialised lazily (first `restore_state` or
    `commit_batch`), which bumps the transactional id's epoch and so fences any older writer;
    after a failed commit the producer is dropped and the next call initialises a new one.
    Oversized records become dead letters exactly as in the Kafka sink. Only exactly_once
    delivery is modelled.
    """

    def __init__(self, broker: MemoryBroker, config: KafkaConfig) -> None:
        if config.delivery != "exactly_once":
            raise ConfigError("kafka.delivery", "the in-memory log models transactions only")
        if not 0 <= config.shard < config.shards:
            raise ConfigError("kafka.shard", f"shard {config.shard} of {config.shards} shards")
        self._broker = broker
        self._config = config
        self._txn_id = config.effective_transactional_id
        self._epoch: int | None = None
        self._txn: MemoryTransaction | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._crashed = False
        self._fenced = False
        self._healthy = False
        # Seeded: keyless records land on the same partitions in every run of a seed.
        self._partitioner = CachingPartitioner(rng=random.Random(0))
        self._parts: dict[str, list[int]] = {}  # topic -> its partition numbers

    def __repr__(self) -> str:
        return f"MemoryLog(transactional_id={self._txn_id!r}, epoch={self._epoch})"

    @property
    def broker(self) -> MemoryBroker:
        return self._broker

    @property
    def transactional_id(self) -> str | None:
        return self._txn_id

    @property
    def healthy(self) -> bool:
        return self._healthy and not self._closed and not self._fenced

    @property
    def in_transaction(self) -> bool:
        return self._txn is not None

    async def start(self) -> None:
        self._check_open()

    async def close(self) -> None:
        """Lets a commit in progress finish, then refuses further work; safe to call twice."""
        if self._closed:
            return
        async with self._lock:
            self._closed = True
            self._healthy = False
            if self._txn is not None:
                self._txn.abort()

    def crash(self) -> None:
        """The process died: its open transaction is discarded (never visible) and this writer
        refuses all further work, as a killed process would do nothing more."""
        self._crashed = True
        self._closed = True
        self._healthy = False
        if self._txn is not None:
            self._txn.abort()

    # --- TransactionalLog ---------------------------------------------------------------------

    async def ensure_topics(self, names: Iterable[str]) -> None:
        self._check_open()
        wanted = [n for n in names if n not in self._broker._topics]
        if not wanted:
            return
        await self._call(self._create_topics, wanted)

    async def restore_state(self) -> dict[bytes, bytes]:
        """The state topic's latest value per key, read_committed; initialises the producer
        first when it is not (which fences an older writer of the same transactional id)."""
        self._check_open()
        async with self._lock:
            self._check_fenced()

            def restore() -> dict[bytes, bytes]:
                c = self._config
                self._create_topics([c.state_topic])
                if self._epoch is None:
                    self._epoch = self._broker._init_producer(self._txn_id)
                check_state_partitions(
                    c.state_topic, self._broker.partition_count(c.state_topic), c.shards
                )
                # Only this shard's partition, up to its last stable offset.
                return self._broker.latest_per_key(c.state_topic, [c.shard])

            return await self._call(restore)

    def begin(self) -> MemoryTransaction:
        """Opens a transaction (one at a time); the producer must be initialised."""
        self._check_open()
        self._check_fenced()
        if self._epoch is None:
            raise KafkaUnavailable("no producer: call restore_state() first")
        if self._txn is not None:
            raise RuntimeError("a transaction is already open")
        self._txn = MemoryTransaction(self, self._epoch)
        return self._txn

    async def commit_batch(
        self, records: Sequence[Record], state: Mapping[bytes, bytes | None]
    ) -> BatchResult:
        """`records` and `state` in one transaction (see the class docstring). Raises Fenced,
        or KafkaUnavailable after which the outcome is unknown."""
        self._check_open()
        async with self._lock:
            self._check_fenced()
            c = self._config
            batch, diverted = divert_oversized(
                records, max_bytes=c.max_message_bytes, dlq_topic=c.dlq_topic
            )
            if not batch and not state:
                return BatchResult(published=0, dlq=0)
            try:
                await self._reach()
                if self._epoch is None:
                    self._epoch = self._broker._init_producer(self._txn_id)
                self._create_topics({r.topic for r in batch} | {c.state_topic, c.dlq_topic})
                txn = self.begin()
                txn.send(batch)
                txn.send_state(state)
                await txn.commit()
            except KafkaUnavailable:
                self._healthy = False
                self._epoch = None  # discarded, like the Kafka sink's failed producer
                raise
            except BaseException:
                self._healthy = False
                raise
            self._healthy = True
            return BatchResult(published=len(batch) - len(diverted), dlq=len(diverted))

    # --- internals ----------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        try:
            await self._reach()
            result = fn(*args)
        except KafkaUnavailable:
            self._healthy = False
            raise
        self._healthy = True
        return result

    async def _reach(self) -> None:
        """One round trip to the broker: its latency, or its outage."""
        await asyncio.sleep(self._broker.latency)
        left = self._broker.outage_left()
        if left > 0:
            wait = min(self._config.request_timeout, left)
            await asyncio.sleep(wait)
            self._broker.stats.unavailable += 1
            raise KafkaUnavailable(f"Kafka did not answer within {wait:g}s (simulated outage)")
        if self._crashed:
            raise ClosedError("the log's process crashed")

    def _create_topics(self, names: Iterable[str]) -> None:
        c = self._config
        for name in names:
            if name == c.state_topic:
                self._broker._create_topic(name, c.shards, compacted=True)
            else:
                partitions = c.topic_partitions or self._broker.num_partitions
                self._broker._create_topic(name, partitions, compacted=False)

    def _partition(self, topic: str, key: bytes | None) -> int:
        # Per record: the topic's partition list is built once (topics never shrink).
        parts = self._parts.get(topic)
        if parts is None or len(parts) != self._broker.partition_count(topic):
            parts = self._parts[topic] = list(range(self._broker.partition_count(topic)))
        return self._partitioner(key, parts, parts)

    def _fence(self) -> Fenced:
        self._fenced = True
        self._healthy = False
        return Fenced(f"transactional id {self._txn_id!r} was taken over by another producer")

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the log is closed" + (" (crashed)" if self._crashed else ""))

    def _check_fenced(self) -> None:
        if self._fenced:
            raise Fenced(f"transactional id {self._txn_id!r} was taken over by another producer")


__all__ = [
    "BrokerStats",
    "CommitFault",
    "LogRecord",
    "MemoryBroker",
    "MemoryLog",
    "MemoryTransaction",
]
