"""The Kafka transactional writer: a batch's records plus its state records in one transaction."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from ingestor.config import KafkaConfig
from ingestor.errors import ClosedError, ConfigError, Fenced, IngestorError, KafkaUnavailable
from ingestor.events import Record
from ingestor.log import BatchResult
from ingestor.log.kafka_admin import TOPIC_SIZE_SLACK, TopicAdmin, wait_for_leaders
from ingestor.log.kafka_common import FENCED, caused_by, kafka_client_kwargs, kafka_ssl_context
from ingestor.log.kafka_private import check_aiokafka_version, fail_pending
from ingestor.log.kafka_restore import read_state
from ingestor.log.partition import CachingPartitioner
from ingestor.metrics import DLQ_EVENTS, TRANSACTIONS
from ingestor.resource import AsyncResource
from ingestor.route import dead_letter, divert_oversized, record_size
from ingestor.shards import check_state_partitions

# The sink's log events keep their historical logger name (dashboards and alerts match it).
log = structlog.get_logger("ingestor.sink")

# Bigger producer batches than aiokafka's 16 KB default: fewer produce requests per transaction.
MAX_BATCH_BYTES = 512 * 1024
LINGER_MS = 5
# Upper bound for best-effort clean-up (abort, stop) after a failure, so a dead broker cannot
# hold the caller much longer than the operation's own timeout.
CLEANUP_SECONDS = 5.0
DISCARD_SECONDS = 1.0

_TOO_LARGE = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
)


class _Rejected(Exception):
    """Internal: the broker refused some records of the batch as too large (indexes into it)."""

    def __init__(self, indexes: list[int], cause: BaseException) -> None:
        super().__init__(f"{len(indexes)} records rejected as too large: {cause!r}")
        self.indexes = indexes
        self.cause = cause


class KafkaLog(AsyncResource):
    """Writes batches of records and their state records to Kafka, and creates topics.

    ``delivery = "exactly_once"``: each ``commit_batch`` is one Kafka transaction holding the
    batch's records and its state records; the commit makes both visible to read_committed
    consumers, any failure aborts both. The transactional id is derived from the shard, so a
    second copy of the same shard fences this one: ``commit_batch`` then raises ``Fenced`` and
    the sink refuses all further work (re-initialising would fence the new owner back).

    ``delivery = "at_least_once"``: an idempotent producer; records are sent and acknowledged
    first, and only then the state, so a crash in between re-publishes rather than loses.

    Contract with the caller: after ``commit_batch`` raises, the outcome is unknown; call
    ``restore_state()`` before trying again. The failed producer has been discarded; the next
    call creates a new one with the same transactional id, whose initialisation aborts whatever
    transaction the old one left open, so ``restore_state()`` then reads exactly what was
    committed.
    """

    def __init__(self, config: KafkaConfig, *, client_id: str = "ingestor") -> None:
        if not 0 <= config.shard < config.shards:
            raise ConfigError("kafka.shard", f"shard {config.shard} of {config.shards} shards")
        self._config = config
        self._client_id = client_id
        self._exactly_once = config.delivery == "exactly_once"
        self._timeout = config.request_timeout
        self._ssl_context = kafka_ssl_context(config)
        self._producer: AIOKafkaProducer | None = None
        self._admin = TopicAdmin(config, self._client_kwargs(), client_id)
        self._known_topics: set[str] = set()
        self._topics_lock = asyncio.Lock()
        # One transaction at a time: aiokafka's producer holds a single transaction state.
        self._lock = asyncio.Lock()
        self._closed = False
        self._fenced = False
        self._healthy = False
        self._partitioner = CachingPartitioner()

    def __repr__(self) -> str:
        # Deliberately no config dump: only what identifies the sink, never credentials.
        return (
            f"KafkaLog(bootstrap={self._config.bootstrap_servers!r}, "
            f"delivery={self._config.delivery!r}, transactional_id={self.transactional_id!r})"
        )

    @property
    def transactional_id(self) -> str | None:
        """The shard's transactional id in exactly_once mode, None in at_least_once mode."""
        return self._config.effective_transactional_id if self._exactly_once else None

    @property
    def healthy(self) -> bool:
        """True while the last interaction with Kafka succeeded (for /readyz)."""
        return self._healthy and not self._closed and not self._fenced

    async def start(self) -> None:
        # Connections are made lazily by the first call, so a sink can be entered (and
        # /readyz can answer "not ready") before the broker is reachable.
        self._check_open()
        check_aiokafka_version()

    async def close(self) -> None:
        """Stops the producer and the admin client; a commit in progress finishes first."""
        if self._closed:
            return
        self._closed = True
        self._healthy = False
        # Waits for an in-flight commit_batch, which is itself bounded by its timeout.
        async with self._lock:
            producer, self._producer = self._producer, None
            if producer is not None:
                await _stop_producer(producer, graceful=True)
            await self._admin.close()
        log.debug("kafka log closed", transactional_id=self.transactional_id)

    # --- topics ---------------------------------------------------------------------------

    async def ensure_topics(self, names: Iterable[str]) -> None:
        """Creates the topics that do not exist yet and waits until the producer sees them.

        The state topic is created compacted with one partition per shard; every
        other topic (the DLQ included) gets ``topic_partitions``. A topic that already exists is
        fine (another process may have made it); its settings are left alone.
        """
        self._check_open()
        wanted = set(names)
        if wanted <= self._known_topics:
            return
        async with self._topics_lock:
            missing = sorted(wanted - self._known_topics)
            if not missing:
                return
            try:
                async with asyncio.timeout(self._timeout):
                    created = await self._admin.create(missing)
                    producer = await self._producer_ready()
                    partitions = {}
                    for name in missing:
                        # Metadata propagates asynchronously after CreateTopics; sending before
                        # the producer knows the topic would stall the batch instead.
                        partitions[name] = await producer.partitions_for(name)
                    # ... and a new topic's leaders take a moment longer to serve it.
                    await wait_for_leaders(
                        self._client_kwargs(),
                        self._client_id,
                        {name: partitions[name] for name in created},
                    )
            except BaseException as exc:
                self._healthy = False
                await self._admin.reset()
                if isinstance(exc, IngestorError) or not isinstance(exc, Exception):
                    raise
                raise self._convert(exc, "creating topics") from exc
            self._known_topics.update(missing)
            self._healthy = True

    # --- state ----------------------------------------------------------------------------

    async def restore_state(self) -> dict[bytes, bytes]:
        """Reads this shard's partition of the state topic (partition n = shard n) from its
        beginning to its last stable offset with read_committed.

        Returns the latest value per key; a tombstone (value None) deletes the key. Creates the
        state topic when it does not exist yet (then the answer is empty). Another shard's open
        transaction holds back only its own partition's last stable offset, never this one's.
        Raises StatePartitionMismatch when the topic's partition count is not kafka.shards.
        """
        self._check_open()
        async with self._lock:
            self._check_fenced()
            state_topic = self._config.state_topic
            await self.ensure_topics([state_topic])
            try:
                async with asyncio.timeout(self._timeout):
                    # Initialising the producer first fences an older incarnation of this shard
                    # and aborts its open transaction; otherwise the read_committed end offset
                    # would sit at that transaction's start until it timed out.
                    producer = await self._producer_ready()
                    partitions = await producer.partitions_for(state_topic)
                check_state_partitions(state_topic, len(partitions), self._config.shards)
                state = await read_state(
                    self._client_kwargs(),
                    client_id=self._client_id,
                    topic=state_topic,
                    partitions=[self._config.shard],
                    round_seconds=self._timeout,
                )
            except BaseException as exc:
                self._healthy = False
                if isinstance(exc, IngestorError) or not isinstance(exc, Exception):
                    raise
                raise self._convert(exc, "restoring state") from exc
            self._healthy = True
            log.info(
                "state partition restored",
                topic=state_topic,
                partition=self._config.shard,
                keys=len(state),
            )
            return state

    # --- batches --------------------------------------------------------------------------

    async def commit_batch(
        self, records: Sequence[Record], state: Mapping[bytes, bytes | None]
    ) -> BatchResult:
        """Publishes ``records`` and the ``state`` records (state topic, key -> value; None is a
        tombstone) as one unit: one transaction (exactly_once), or records acknowledged before
        state (at_least_once).

        A record larger than ``max_message_bytes`` is replaced by a dead-letter record; so is a
        record the broker still rejects as too large (the batch is then aborted and retried once
        without it). Topics the batch needs are created first. Raises ``Fenced`` when another
        producer took over the transactional id, ``KafkaUnavailable`` otherwise; after raising,
        the outcome is unknown (see the class docstring).
        """
        self._check_open()
        async with self._lock:
            self._check_fenced()
            batch, diverted = self._precheck(records)
            if not batch and not state:
                return BatchResult(published=0, dlq=0)
            c = self._config
            await self.ensure_topics({r.topic for r in batch} | {c.state_topic, c.dlq_topic})
            try:
                await self._attempt(batch, state)
            except _Rejected as rejected:
                culprits = self._culprits(batch, rejected.indexes)
                for index in culprits:
                    size = record_size(batch[index])
                    detail = f"{size} bytes refused by the broker ({rejected.cause!r})"[:200]
                    batch[index] = self._dead_letter(batch[index], detail)
                diverted += len(culprits)
                log.warning(
                    "batch retried without the records the broker refused as too large",
                    transactional_id=self.transactional_id,
                    diverted=len(culprits),
                )
                # A transaction was aborted whole and is redone whole; without transactions
                # the acknowledged records stay published and only the refused ones are resent.
                retry = batch if self._exactly_once else [batch[i] for i in rejected.indexes]
                try:
                    await self._attempt(retry, state)
                except _Rejected as again:
                    raise KafkaUnavailable(
                        f"the broker rejected records as too large twice: {again.cause!r}"[:300]
                    ) from again.cause
            self._healthy = True
            if self._exactly_once:
                TRANSACTIONS.labels(outcome="committed").inc()
            if diverted:
                DLQ_EVENTS.labels(reason="too_large").inc(diverted)
            return BatchResult(published=len(batch) - diverted, dlq=diverted)

    def _precheck(self, records: Sequence[Record]) -> tuple[list[Record], int]:
        """Replaces records that cannot fit ``max_message_bytes`` by dead-letter records."""
        c = self._config
        batch, diverted = divert_oversized(
            records, max_bytes=c.max_message_bytes, dlq_topic=c.dlq_topic
        )
        for index in diverted:
            _log_dead_letter(records[index], dict(batch[index].headers)["dlq_detail"].decode())
        return batch, len(diverted)

    def _culprits(self, batch: list[Record], rejected: list[int]) -> list[int]:
        """Which rejected records to divert: the broker fails a whole producer batch, so small
        neighbours of a big record fail with it. A record bigger than a producer batch always
        travels alone and is surely guilty; otherwise the largest rejected record is.
        """
        alone = [i for i in rejected if record_size(batch[i]) > self._max_batch_bytes]
        return alone or [max(rejected, key=lambda i: record_size(batch[i]))]

    def _dead_letter(self, record: Record, detail: str) -> Record:
        _log_dead_letter(record, detail)
        return dead_letter(
            record, "too_large", detail, dlq_topic=self._config.dlq_topic, keep_value=False
        )

    async def _attempt(self, batch: list[Record], state: Mapping[bytes, bytes | None]) -> None:
        producer = await self._producer_ready()
        in_transaction = False
        try:
            async with asyncio.timeout(self._timeout):
                if self._exactly_once:
                    await producer.begin_transaction()
                    in_transaction = True
                    futures = await self._send(producer, batch)
                    futures += await self._send_state(producer, state)
                    # aiokafka does not fail the transaction when a record fails; committing
                    # now would publish the batch without it. Every ack must be checked first.
                    acks = await asyncio.gather(*futures, return_exceptions=True)
                    self._check_acks(acks, records=len(batch))
                    await producer.commit_transaction()
                    in_transaction = False
                else:
                    futures = await self._send(producer, batch)
                    acks = await asyncio.gather(*futures, return_exceptions=True)
                    self._check_acks(acks, records=len(batch))
                    # State only after every record is acknowledged: a crash in between means
                    # re-publishing (at least once), never skipping.
                    futures = await self._send_state(producer, state)
                    acks = await asyncio.gather(*futures, return_exceptions=True)
                    self._check_acks(acks, records=0)
        except BaseException as exc:
            self._healthy = False
            # Abort only when the broker is answering: after a timeout it likely is not, and
            # after fencing the transaction is no longer ours to end.
            answering = isinstance(exc, Exception) and not isinstance(exc, TimeoutError)
            abort = in_transaction and answering and not caused_by(exc, FENCED)
            await self._abandon(producer, exc, abort=abort)
            if isinstance(exc, _Rejected) or not isinstance(exc, Exception):
                raise
            raise self._convert(exc, "committing a batch") from exc

    async def _send(self, producer: AIOKafkaProducer, batch: list[Record]) -> list[Any]:
        """Queues every record, without awaiting acks; returns each record's ack future.

        Records go straight into one producer batch per topic-partition: aiokafka's
        per-record `send()` costs ~30 us of Python each, most of the CPU at thousands of
        events a second. Partitions are chosen as `send()` would (Java's murmur2 of the key),
        and batches of one partition are submitted in order, so per-key order holds.
        """
        partitions: dict[str, list[int]] = {}
        chains: dict[tuple[str, int], list[tuple[Any, list[int]]]] = {}
        futures: list[Any] = [None] * len(batch)
        for index, r in enumerate(batch):
            parts = partitions.get(r.topic)
            if parts is None:
                parts = partitions[r.topic] = sorted(await producer.partitions_for(r.topic))
            partition = self._partitioner(r.key, parts, parts)
            chain = chains.setdefault((r.topic, partition), [])
            headers = list(r.headers)
            if chain and chain[-1][0].append(
                timestamp=None, key=r.key, value=r.value, headers=headers
            ):
                chain[-1][1].append(index)
                continue
            builder = producer.create_batch()
            if builder.append(timestamp=None, key=r.key, value=r.value, headers=headers):
                chain.append((builder, [index]))
            else:
                # Bigger than a whole producer batch: send() sizes a batch for it alone.
                futures[index] = await producer.send(
                    r.topic, r.value, key=r.key, headers=headers, partition=partition
                )

        async def submit(topic: str, partition: int, chain: list[tuple[Any, list[int]]]) -> None:
            for builder, indexes in chain:
                future = await producer.send_batch(builder, topic, partition=partition)
                for index in indexes:
                    futures[index] = future

        try:
            async with asyncio.TaskGroup() as tg:
                for (topic, partition), chain in chains.items():
                    tg.create_task(submit(topic, partition, chain))
        except BaseExceptionGroup as group:
            # The caller classifies errors (fenced, too large, unavailable) by their type.
            raise group.exceptions[0] from None
        return futures

    async def _send_state(
        self, producer: AIOKafkaProducer, state: Mapping[bytes, bytes | None]
    ) -> list[Any]:
        # Explicitly this shard's partition, not by key hash: a restore reads only its own
        # partition, so no other shard's open transaction can hide this shard's newest state.
        topic, partition = self._config.state_topic, self._config.shard
        return [
            await producer.send(topic, value, key=key, partition=partition)
            for key, value in state.items()
        ]

    def _check_acks(self, results: list[Any], *, records: int) -> None:
        """Raises the first failure among the acks; the first ``records`` acks belong to batch
        records (which can be diverted when too large), the rest to state records (which cannot).
        """
        too_large: list[int] = []
        for index, result in enumerate(results):
            if not isinstance(result, BaseException):
                continue
            if not isinstance(result, _TOO_LARGE):
                raise result
            if index >= records:
                raise IngestorError(f"a state record is too large for the state topic: {result!r}")
            too_large.append(index)
        if too_large:
            raise _Rejected(too_large, results[too_large[0]])

    async def _abandon(
        self, producer: AIOKafkaProducer, exc: BaseException, *, abort: bool
    ) -> None:
        """Gives up the current attempt: aborts when the broker answered (so read_committed
        consumers are not held back until the transaction times out), then discards the
        producer; its successor's initialisation aborts whatever is still open.
        """
        if abort:
            try:
                async with asyncio.timeout(CLEANUP_SECONDS):
                    await producer.abort_transaction()
            except Exception as abort_exc:
                log.warning("transaction abort failed", error=repr(abort_exc))
        if self._exactly_once:
            TRANSACTIONS.labels(outcome="aborted").inc()
        log.warning(
            "commit attempt failed",
            transactional_id=self.transactional_id,
            error=repr(exc)[:300],
            aborted=abort,
        )
        if self._producer is producer:
            self._producer = None
        await _stop_producer(producer, graceful=False)

    # --- clients --------------------------------------------------------------------------

    @property
    def _max_batch_bytes(self) -> int:
        # A producer batch never exceeds what a topic accepts, so only a single oversized
        # record can ever be refused.
        return min(MAX_BATCH_BYTES, self._config.max_message_bytes)

    def _client_kwargs(self) -> dict[str, Any]:
        return kafka_client_kwargs(self._config, ssl_context=self._ssl_context)

    async def _producer_ready(self) -> AIOKafkaProducer:
        self._check_fenced()
        check_aiokafka_version()
        if self._producer is not None:
            return self._producer
        c = self._config
        producer = AIOKafkaProducer(
            **self._client_kwargs(),
            client_id=self._client_id,
            acks="all",
            enable_idempotence=True,
            transactional_id=self.transactional_id,
            compression_type=None if c.compression == "none" else c.compression,
            max_request_size=c.max_message_bytes + TOPIC_SIZE_SLACK,
            max_batch_size=self._max_batch_bytes,
            linger_ms=LINGER_MS,
            partitioner=self._partitioner,
        )
        try:
            # start() initialises the producer id; with a transactional id that fences any
            # older producer of this shard and aborts its open transaction.
            async with asyncio.timeout(self._timeout):
                await producer.start()
        except BaseException as exc:
            await _stop_producer(producer, graceful=False)
            if not isinstance(exc, Exception):
                raise
            raise self._convert(exc, "starting the producer") from exc
        self._producer = producer
        log.info(
            "producer started",
            bootstrap=c.bootstrap_servers,
            transactional_id=self.transactional_id,
            delivery=c.delivery,
        )
        return producer

    def _convert(self, exc: BaseException, doing: str) -> IngestorError:
        if isinstance(exc, IngestorError):
            return exc
        if caused_by(exc, FENCED):
            self._fenced = True
            log.error("producer fenced", transactional_id=self.transactional_id)
            return Fenced(
                f"transactional id {self.transactional_id!r} was taken over by another producer"
            )
        if isinstance(exc, TimeoutError):
            return KafkaUnavailable(f"Kafka did not answer within {self._timeout:g}s while {doing}")
        return KafkaUnavailable(f"Kafka failed while {doing}: {exc!r}"[:300])

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the Kafka sink is closed")

    def _check_fenced(self) -> None:
        if self._fenced:
            raise Fenced(
                f"transactional id {self.transactional_id!r} was taken over by another producer"
            )


def _log_dead_letter(record: Record, detail: str) -> None:
    log.warning(
        "record sent to DLQ",
        event_id=record.event_id,
        event_type=next(
            (v.decode("utf-8", "replace") for k, v in record.headers if k == "event_type"), None
        ),
        topic=record.topic,
        reason="too_large",
        size=record_size(record),
        detail=detail,
    )


async def _stop_producer(producer: AIOKafkaProducer, *, graceful: bool) -> None:
    """Stops a producer within CLEANUP_SECONDS even when the broker is gone.

    A discarded producer's pending records are failed first (see `fail_pending`): stop()
    would otherwise try to flush them forever.
    """
    if not graceful:
        fail_pending(producer)
    try:
        # A discarded producer has nothing worth waiting for; only its background tasks (which
        # may be retrying against a dead broker) need a moment to notice the cancellation.
        async with asyncio.timeout(CLEANUP_SECONDS if graceful else DISCARD_SECONDS):
            await producer.stop()
    except TimeoutError:
        log.debug("producer did not stop in time", graceful=graceful)
        await producer.client.close()


__all__ = ["KafkaLog", "kafka_client_kwargs"]
