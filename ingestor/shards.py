"""Scale-out: accounts to shards by a stable hash, shards to processes by Kafka's group protocol."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from ingestor import metrics, retry
from ingestor.config import KafkaConfig
from ingestor.errors import KafkaUnavailable, StatePartitionMismatch
from ingestor.events import Stream
from ingestor.log.kafka_admin import TopicAdmin
from ingestor.log.kafka_common import kafka_client_kwargs

log = structlog.get_logger(__name__)

# The platform's own streams hash as this name; an account id always starts with "acct_".
PLATFORM = "platform"


def shard_of(account: str | None, shards: int) -> int:
    """The shard an account's streams belong to: crc32 of the account id (the platform's
    streams: of "platform") modulo the shard count.

    crc32 is fixed by its standard (zlib's, IEEE 802.3), so every version of every process
    agrees; both APIs of an account land on one shard. Changing the shard count moves accounts,
    which is why a state topic's count is fixed (see `ensure_state_partitions`).
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    name = PLATFORM if account is None else account
    return zlib.crc32(name.encode("utf-8")) % shards


def streams_by_shard(streams: Iterable[Stream], shards: int) -> dict[int, list[Stream]]:
    """Every shard (0..shards-1, empty ones too) with its streams, in the order given."""
    out: dict[int, list[Stream]] = {n: [] for n in range(shards)}
    for stream in streams:
        out[shard_of(stream.account, shards)].append(stream)
    return out


def check_state_partitions(topic: str, partitions: int, shards: int) -> None:
    """Refuses a state topic whose partition count is not the shard count.

    Each shard writes its state to its own partition (partition n = shard n), and accounts map
    to shards by `shard_of(account, shards)`: with another count a shard would miss the state its
    accounts wrote before, and re-publish their events. A state topic written by a version
    before shards has 1 partition, so `kafka.shards = 1` keeps it working unchanged.
    """
    if partitions != shards:
        raise StatePartitionMismatch(
            f"state topic {topic!r} has {partitions} partition(s) but kafka.shards = {shards}: "
            f"set kafka.shards = {partitions} to keep this state (see README, Scale-out)"
        )


# --- owning shards ---------------------------------------------------------------------------

ShardRunner = Callable[[int, asyncio.Event], Coroutine[Any, Any, None]]
# Left of the rebalance timeout for leaving the group after the shards are released.
RELEASE_MARGIN_SECONDS = 2.0
# Leaving the group is best effort: the session timeout moves the shards on anyway.
STOP_SECONDS = 5.0


class ShardSet:
    """The shards this process owns, each one task of `run(shard, stop)` in the caller's task
    group, from its assignment until it is revoked.

    `revoked` sets the shards' stop events and waits up to `release_timeout` for their
    pipelines to stop intake, drain and commit; a pipeline still running then is cancelled
    (what it had not committed is re-read by the next owner, whose producer aborts it). Only
    then does it return, so the group hands the shard on after it is released. Each change is
    logged ("shard owned", "shard released") and exported as `ingestor_shard_owned{shard}`.
    """

    def __init__(self, tg: asyncio.TaskGroup, run: ShardRunner, *, release_timeout: float) -> None:
        self._tg = tg
        self._run = run
        self._release_timeout = release_timeout
        self._tasks: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}

    @property
    def owned(self) -> set[int]:
        return set(self._tasks)

    def tasks(self) -> list[asyncio.Task[None]]:
        """The owned shards' tasks (a one-shot run waits for them all)."""
        return [task for task, _stop in self._tasks.values()]

    async def assigned(self, shards: Iterable[int]) -> None:
        for shard in sorted(set(shards) - set(self._tasks)):
            stop = asyncio.Event()
            task = self._tg.create_task(self._run(shard, stop), name=f"shard-{shard}")
            self._tasks[shard] = (task, stop)
            metrics.SHARD_OWNED.labels(shard=str(shard)).set(1)
            log.info("shard owned", shard=shard, owned=sorted(self._tasks))

    async def revoked(self, shards: Iterable[int]) -> None:
        leaving = {s: self._tasks[s] for s in sorted(set(shards)) if s in self._tasks}
        if not leaving:
            return
        for _task, stop in leaving.values():
            stop.set()
        tasks = [task for task, _stop in leaving.values()]
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            # The process itself is being cancelled (a crash, as the simulation's kill): no
            # drain, the shards' tasks are cancelled with it.
            for task in tasks:
                task.cancel()
            late: set[asyncio.Task[None]] = set()
        else:
            _done, late = await asyncio.wait(tasks, timeout=self._release_timeout)
        for task in late:
            task.cancel()
        if late:
            log.error(
                "shards did not drain within the rebalance timeout; cancelled, the next owner "
                "re-reads what they had not committed",
                shards=sorted(s for s, (t, _e) in leaving.items() if t in late),
            )
            await asyncio.wait(late)
        for shard in leaving:
            del self._tasks[shard]
            metrics.SHARD_OWNED.labels(shard=str(shard)).set(0)
            log.info("shard released", shard=shard, owned=sorted(self._tasks))

    async def release_all(self) -> None:
        await self.revoked(list(self._tasks))


class GroupConsumer(Protocol):
    """What `ShardGroup` uses of aiokafka's AIOKafkaConsumer (a fake in unit tests)."""

    def subscribe(self, topics: list[str], *, listener: ConsumerRebalanceListener) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def getmany(self, *, timeout_ms: int) -> dict[Any, Any]: ...


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped here
    def __init__(self, shards: ShardSet) -> None:
        self._shards = shards

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._shards.revoked(tp.partition for tp in revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._shards.assigned(tp.partition for tp in assigned)


def group_consumer(config: KafkaConfig) -> GroupConsumer:
    """A member of the group `ingestor.<prefix>` on the coordination topic. It never reads a
    record (nothing is written there) and commits no offsets: only its assignment matters."""
    timeout_ms = int(config.rebalance_timeout * 1000)
    session_ms = int(config.session_timeout * 1000)
    consumer: GroupConsumer = AIOKafkaConsumer(
        **kafka_client_kwargs(config),
        client_id=f"ingestor-{config.topic_prefix}-shards",
        group_id=config.group_id,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=max(100, session_ms // 3),
        # Revoking waits for the shards to drain and commit: the group waits that long.
        rebalance_timeout_ms=timeout_ms,
        max_poll_interval_ms=timeout_ms,
    )
    return consumer


async def ensure_coordination_topic(config: KafkaConfig) -> None:
    """Creates `<prefix>._ingestor_shards` with `kafka.shards` partitions (another process may
    have made it) and refuses one with another count: the group would assign other shards."""
    topic = config.coordination_topic
    shaped = dataclasses.replace(config, topic_partitions=config.shards)
    admin = TopicAdmin(shaped, kafka_client_kwargs(config), f"ingestor-{config.topic_prefix}")
    try:
        async with asyncio.timeout(config.request_timeout):
            # One this call created has the count it asked for; describing it right away
            # could fail while its metadata propagates, and every start would wait a retry.
            created = await admin.create([topic])
            count = config.shards if created else await admin.partition_count(topic)
    except TimeoutError as exc:
        raise KafkaUnavailable(f"Kafka did not answer creating {topic!r}") from exc
    except KafkaError as exc:
        raise KafkaUnavailable(f"cannot create {topic!r}: {exc!r}") from exc
    finally:
        await admin.close()
    if count != config.shards:
        raise StatePartitionMismatch(
            f"coordination topic {topic!r} has {count} partition(s) but kafka.shards = "
            f"{config.shards}: every process must use one shard count (see README, Scale-out)"
        )


class GroupMembership(Protocol):
    """What serve() runs to own shards: a member of the group until `stop` (ShardGroup, or a
    scripted group in the simulation)."""

    async def run(self, stop: asyncio.Event) -> None: ...


class ShardGroup:
    """Joins the consumer group on the coordination topic and keeps `shards` in step with the
    assignment Kafka's group protocol makes: a process joining, leaving or dying (no heartbeat
    for `kafka.session_timeout`) moves shards. No leader election of our own."""

    def __init__(
        self,
        config: KafkaConfig,
        shards: ShardSet,
        *,
        consumer: Callable[[KafkaConfig], GroupConsumer] = group_consumer,
        ensure_topic: Callable[[KafkaConfig], Awaitable[None]] = ensure_coordination_topic,
    ) -> None:
        self._config = config
        self._shards = shards
        self._consumer = consumer
        self._ensure_topic = ensure_topic

    async def run(self, stop: asyncio.Event) -> None:
        """Member of the group until `stop`; then releases every shard and leaves the group.
        A Kafka failure releases the shards and joins again after a backoff."""
        for shard in range(self._config.shards):
            # Exported at 0 from the start (labels() leaves a value already set).
            metrics.SHARD_OWNED.labels(shard=str(shard))
        policy = retry.forever("shard group", on=(KafkaUnavailable,), sleep=retry.until_set(stop))
        await policy.call(lambda: self._member(stop))

    async def _member(self, stop: asyncio.Event) -> None:
        # A broker that accepts connections and never answers holds these for up to
        # kafka.request_timeout; a stop must not wait for that.
        if not await _unless_stopped(self._ensure_topic(self._config), stop):
            return
        consumer = self._consumer(self._config)
        consumer.subscribe([self._config.coordination_topic], listener=_Listener(self._shards))
        try:
            if not await _unless_stopped(consumer.start(), stop):
                return
            log.info(
                "joined the shard group",
                group=self._config.group_id,
                topic=self._config.coordination_topic,
                shards=self._config.shards,
            )
            while not stop.is_set():
                # Polling keeps the membership alive (max.poll.interval) and runs rebalances.
                await consumer.getmany(timeout_ms=500)
        except KafkaError as exc:
            raise KafkaUnavailable(f"the shard group failed: {exc!r}"[:300]) from exc
        finally:
            # Released before leaving: the group must not hand a shard on while it drains.
            await self._shards.release_all()
            began = asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(STOP_SECONDS):
                    await consumer.stop()
            except TimeoutError:
                log.warning("the shard group's consumer did not stop in time; left behind")
            log.info(
                "left the shard group", seconds=round(asyncio.get_running_loop().time() - began, 2)
            )


async def _unless_stopped(work: Awaitable[None], stop: asyncio.Event) -> bool:
    """True once `work` is done; False (and `work` cancelled) when `stop` is set first."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return False
    task.result()  # its error, if it failed
    return True
