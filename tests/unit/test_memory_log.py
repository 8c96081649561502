"""The in-memory transactional log: atomicity, abort, fencing, compaction, read_committed restore,
unknown outcomes, outages and crashes, in simulated time."""

from __future__ import annotations

import asyncio
import dataclasses

import orjson
import pytest

from ingestor import clock
from ingestor.clock import LoopClock
from ingestor.config import KafkaConfig
from ingestor.errors import ClosedError, ConfigError, Fenced, KafkaUnavailable
from ingestor.events import Record
from ingestor.log import BatchResult, TransactionalLog
from ingestor.log.memory import COMPACT_SLACK, MemoryBroker, MemoryLog
from ingestor.log.partition import CachingPartitioner
from ingestor.route import record_size

CONFIG = KafkaConfig(topic_prefix="sim", topic_partitions=3, request_timeout=10.0)
TOPIC = "sim.charge.updated"
STATE = CONFIG.state_topic


def events(tag: str, n: int, size: int = 50) -> list[Record]:
    return [
        Record(
            TOPIC,
            f"obj_{i % 4}".encode(),
            orjson.dumps({"id": f"evt_{tag}_{i}", "pad": "x" * size}),
            (("event_id", f"evt_{tag}_{i}".encode()), ("event_type", b"charge.updated")),
            f"evt_{tag}_{i}",
        )
        for i in range(n)
    ]


def ids(broker: MemoryBroker, topic: str = TOPIC) -> list[str]:
    return [dict(r.headers)["event_id"].decode() for r in broker.read_committed(topic)]


async def ready(broker: MemoryBroker, config: KafkaConfig = CONFIG) -> MemoryLog:
    log = MemoryLog(broker, config)
    await log.start()
    await log.restore_state()
    return log


def test_memory_log_implements_the_transactional_log_protocol() -> None:
    """MemoryLog has every member of the seam the pipeline uses (checked by mypy here too)."""
    log: TransactionalLog = MemoryLog(MemoryBroker(), CONFIG)
    assert log.transactional_id == CONFIG.effective_transactional_id
    assert not log.healthy


def test_only_exactly_once_is_modelled() -> None:
    """An at_least_once config is refused as a config error, not silently given transactions."""
    with pytest.raises(ConfigError, match="transactions only"):
        MemoryLog(MemoryBroker(), dataclasses.replace(CONFIG, delivery="at_least_once"))


async def test_commit_makes_records_and_state_visible_together_partitioned_by_murmur2() -> None:
    """A committed batch is visible whole, each key on the partition Kafka's murmur2 picks, in
    commit order per key; the state restore returns the latest value per key."""
    broker = MemoryBroker()
    log = await ready(broker)
    assert await log.commit_batch(events("a", 8), {b"k1": b"s1", b"k2": b"t1"}) == BatchResult(8, 0)
    assert await log.commit_batch(events("b", 4), {b"k1": b"s2"}) == BatchResult(4, 0)
    assert log.healthy
    partitioner = CachingPartitioner()
    for r in broker.read_committed(TOPIC):
        assert r.partition == partitioner(r.key, [0, 1, 2], [0, 1, 2])
    by_key: dict[bytes | None, list[str]] = {}
    for r in broker.read_committed(TOPIC):
        by_key.setdefault(r.key, []).append(dict(r.headers)["event_id"].decode())
    assert by_key[b"obj_0"] == ["evt_a_0", "evt_a_4", "evt_b_0"]
    expected = [f"evt_a_{i}" for i in range(8)] + [f"evt_b_{i}" for i in range(4)]
    assert sorted(ids(broker)) == sorted(expected)
    assert await log.restore_state() == {b"k1": b"s2", b"k2": b"t1"}
    assert len(broker.committed_records("sim.")) == 12 + 3  # the state topic matches the prefix


async def test_unavailable_commit_is_atomic_nothing_visible_and_a_retry_succeeds() -> None:
    """'unavailable': KafkaUnavailable, neither records nor state visible, unhealthy; after the
    contract's restore the same batch commits once."""
    broker = MemoryBroker()
    log = await ready(broker)
    await log.commit_batch(events("ok", 2), {b"p": b"1"})
    broker.fail_next_commit("unavailable")
    with pytest.raises(KafkaUnavailable, match="injected"):
        await log.commit_batch(events("x", 3), {b"p": b"2"})
    assert not log.healthy
    assert sorted(ids(broker)) == ["evt_ok_0", "evt_ok_1"]
    assert await log.restore_state() == {b"p": b"1"}
    await log.commit_batch(events("x", 3), {b"p": b"2"})
    assert sorted(ids(broker)) == ["evt_ok_0", "evt_ok_1", "evt_x_0", "evt_x_1", "evt_x_2"]
    assert broker.stats.aborts == 1


async def test_unknown_outcome_commits_yet_raises() -> None:
    """'unknown': the transaction is committed (records and state visible), but the caller gets
    KafkaUnavailable, so only a restore tells it what happened."""
    broker = MemoryBroker()
    log = await ready(broker)
    broker.fail_next_commit("unknown")
    with pytest.raises(KafkaUnavailable, match="outcome unknown"):
        await log.commit_batch(events("u", 3), {b"p": b"u"})
    assert sorted(ids(broker)) == ["evt_u_0", "evt_u_1", "evt_u_2"]
    assert await log.restore_state() == {b"p": b"u"}
    assert broker.stats.unknown_outcomes == 1


async def test_fault_kinds_are_checked_and_queued_in_order() -> None:
    """Two queued faults fail two commits in order; a bad kind is refused."""
    broker = MemoryBroker()
    with pytest.raises(ValueError, match="kind"):
        broker.fail_next_commit("sometimes")  # type: ignore[arg-type]
    log = await ready(broker)
    broker.fail_next_commit("unknown")
    broker.fail_next_commit("unavailable")
    with pytest.raises(KafkaUnavailable, match="unknown"):
        await log.commit_batch(events("a", 1), {b"p": b"a"})
    with pytest.raises(KafkaUnavailable, match=r"injected\)$"):
        await log.commit_batch(events("b", 1), {b"p": b"b"})
    await log.commit_batch(events("c", 1), {b"p": b"c"})
    assert sorted(ids(broker)) == ["evt_a_0", "evt_c_0"]


async def test_abort_discards_everything_sent_in_the_transaction() -> None:
    """An explicitly aborted transaction shows nothing, and cannot be committed afterwards."""
    broker = MemoryBroker()
    log = await ready(broker)
    txn = log.begin()
    txn.send(events("gone", 3))
    txn.send_state({b"p": b"gone"})
    assert log.in_transaction
    txn.abort()
    assert not log.in_transaction
    with pytest.raises(KafkaUnavailable, match="no longer open"):
        await txn.commit()
    assert broker.read_committed(TOPIC) == []
    assert await log.restore_state() == {}


@pytest.mark.looptime
async def test_a_crash_or_cancellation_mid_commit_leaves_nothing_visible() -> None:
    """With 1 s per broker call, a writer that crashes (or whose task is cancelled) while its
    commit is on the way commits nothing; a restarted writer restores the previous state."""
    with clock.use(LoopClock(0)):
        broker = MemoryBroker(latency=1.0)
        log = await ready(broker)
        await log.commit_batch(events("before", 2), {b"p": b"1"})
        task = asyncio.create_task(log.commit_batch(events("crash", 3), {b"p": b"2"}))
        await asyncio.sleep(1.5)  # past the first round trip: the transaction is open
        assert log.in_transaction
        log.crash()
        with pytest.raises(ClosedError, match="crashed"):
            await task
        with pytest.raises(ClosedError):
            await log.restore_state()

        second = await ready(broker)
        assert await second.restore_state() == {b"p": b"1"}
        task = asyncio.create_task(second.commit_batch(events("cancel", 3), {b"p": b"3"}))
        await asyncio.sleep(1.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not second.in_transaction
        assert sorted(ids(broker)) == ["evt_before_0", "evt_before_1"]
        assert await second.restore_state() == {b"p": b"1"}


async def test_a_second_writer_with_the_same_id_fences_the_first_for_good() -> None:
    """Restoring with a second writer bumps the epoch: the first writer's next commit raises
    Fenced and commits nothing, it stays fenced, and the new owner and other shards' ids commit
    on, each shard's state in its own partition."""
    broker = MemoryBroker()
    config = dataclasses.replace(CONFIG, shards=2)
    first = await ready(broker, config)
    await first.commit_batch(events("first", 2), {b"p": b"first"})
    second = await ready(broker, config)
    assert broker.epoch(config.effective_transactional_id) == 2
    with pytest.raises(Fenced):
        await first.commit_batch(events("zombie", 2), {b"p": b"zombie"})
    assert not first.healthy
    with pytest.raises(Fenced):
        await first.commit_batch(events("zombie2", 1), {})
    with pytest.raises(Fenced):
        await first.restore_state()
    await second.commit_batch(events("second", 2), {b"p": b"second"})
    shard1 = dataclasses.replace(config, shard=1)
    other = await ready(broker, shard1)
    await other.commit_batch(events("other", 1), {b"q": b"other"})
    assert sorted(ids(broker)) == sorted(
        ["evt_first_0", "evt_first_1", "evt_second_0", "evt_second_1", "evt_other_0"]
    )
    assert await (await ready(broker, config)).restore_state() == {b"p": b"second"}
    assert await (await ready(broker, shard1)).restore_state() == {b"q": b"other"}
    assert [r.partition for r in broker.read_committed(STATE)] == [0, 0, 1]


@pytest.mark.looptime
async def test_a_commit_in_flight_when_a_new_owner_starts_is_fenced() -> None:
    """A commit already on its way when another writer initialises fails Fenced, not committed
    (Kafka aborts the old epoch's open transaction)."""
    with clock.use(LoopClock(0)):
        broker = MemoryBroker(latency=1.0)
        first = await ready(broker)
        task = asyncio.create_task(first.commit_batch(events("late", 2), {b"p": b"late"}))
        # The new owner's init lands at +1.2 s, while the first commit is still on its way
        # (one round trip to open the transaction, one to commit it, 1 s each).
        await asyncio.sleep(0.2)
        await ready(broker)
        assert first.in_transaction
        with pytest.raises(Fenced):
            await task
        assert broker.read_committed(TOPIC) == []


async def test_state_restore_is_latest_per_key_with_tombstones_and_compaction() -> None:
    """Tombstones delete keys; compaction keeps the state topic near its live size while a
    restore still reads exactly the latest value per key."""
    broker = MemoryBroker()
    log = await ready(broker)
    await log.commit_batch([], {b"a": b"1", b"b": b"1", b"c": b"1"})
    await log.commit_batch([], {b"a": None, b"b": b"2"})
    assert await log.restore_state() == {b"b": b"2", b"c": b"1"}
    for i in range(3 * COMPACT_SLACK):
        await log.commit_batch([], {b"b": str(i).encode(), f"tmp{i}".encode(): None})
    assert len(broker.read_committed(STATE)) <= 2 + COMPACT_SLACK + 1
    assert broker.stats.compactions >= 2
    assert await log.restore_state() == {b"b": str(3 * COMPACT_SLACK - 1).encode(), b"c": b"1"}
    assert await (await ready(broker)).restore_state() == await log.restore_state()


@pytest.mark.looptime
async def test_an_outage_fails_every_call_after_the_request_timeout_then_recovers() -> None:
    """During an outage each call raises KafkaUnavailable after waiting the request timeout in
    simulated time (or the rest of the outage, if shorter); afterwards calls succeed."""
    with clock.use(LoopClock(0)):
        broker = MemoryBroker()
        log = await ready(broker)
        broker.outage(clock.monotonic() + 25.0)
        started = clock.monotonic()
        with pytest.raises(KafkaUnavailable, match="outage"):
            await log.commit_batch(events("o", 1), {b"p": b"o"})
        assert clock.monotonic() - started == pytest.approx(10.0)
        with pytest.raises(KafkaUnavailable):
            await log.restore_state()
        with pytest.raises(KafkaUnavailable):
            await log.ensure_topics(["sim.new"])
        assert clock.monotonic() - started == pytest.approx(25.0)
        assert not log.healthy
        assert await log.restore_state() == {}
        await log.commit_batch(events("after", 1), {b"p": b"after"})
        assert ids(broker) == ["evt_after_0"]


async def test_an_oversized_record_becomes_a_dead_letter_like_the_kafka_sink() -> None:
    """A record over max_message_bytes is replaced by the shared dead-letter summary; the rest
    of the batch commits."""
    broker = MemoryBroker()
    log = await ready(broker, dataclasses.replace(CONFIG, max_message_bytes=20_000))
    big = events("big", 1, size=30_000)[0]
    result = await log.commit_batch([*events("small", 3), big], {b"p": b"1"})
    assert result == BatchResult(published=3, dlq=1)
    (dead,) = broker.read_committed(CONFIG.dlq_topic)
    assert dict(dead.headers)["dlq_reason"] == b"too_large"
    assert orjson.loads(dead.value or b"") == {
        "event_id": "evt_big_0",
        "event_type": "charge.updated",
        "reason": "too_large",
        "size": record_size(big),
    }


async def test_without_kept_values_event_values_are_dropped_but_state_is_kept() -> None:
    """keep_values=False bounds memory: event records keep keys and headers, not values; the
    state topic keeps its values, so restores are unaffected."""
    broker = MemoryBroker(keep_values=False)
    log = await ready(broker)
    await log.commit_batch(events("a", 2), {b"p": b"1"})
    assert {r.value for r in broker.read_committed(TOPIC)} == {b""}
    assert ids(broker) != []
    assert await log.restore_state() == {b"p": b"1"}


async def test_close_is_idempotent_and_use_after_close_is_refused() -> None:
    """Closing twice is safe; every call afterwards raises ClosedError."""
    log = await ready(MemoryBroker())
    await log.close()
    await log.close()
    assert not log.healthy
    with pytest.raises(ClosedError):
        await log.commit_batch(events("a", 1), {})
    with pytest.raises(ClosedError):
        await log.restore_state()
    with pytest.raises(ClosedError):
        await log.ensure_topics([TOPIC])


async def test_an_open_transaction_holds_back_its_partitions_last_stable_offset() -> None:
    """As in Kafka: a record sent in an open transaction takes its offset at once, and a
    read_committed restore of that partition stops there, hiding even later commits; the
    hold ends when the transaction commits, aborts, or its id is initialised again."""
    broker = MemoryBroker()
    config = dataclasses.replace(CONFIG, transactional_id="a")
    hung = await ready(broker, config)
    txn = hung.begin()
    txn.send_state({b"k": b"hung"})
    # Another writer sharing partition 0 (same shard number, another id) commits after it.
    other = await ready(broker, dataclasses.replace(CONFIG, transactional_id="b"))
    await other.commit_batch([], {b"k2": b"newer"})
    assert broker.last_stable_offset(STATE, 0) == 0
    assert broker.latest_per_key(STATE) == {}
    assert await other.restore_state() == {}
    # A new incarnation of "a" aborts the hung transaction: the newer commit shows.
    await ready(broker, config)
    assert broker.latest_per_key(STATE) == {b"k2": b"newer"}
    with pytest.raises(Fenced):
        await txn.commit()


async def test_a_shard_restores_its_newest_state_while_another_shard_holds_a_transaction() -> None:
    """Shard 1 keeps a transaction open on the state topic; shard 0, whose state lives in its
    own partition, still restores the state it committed after that transaction began."""
    broker = MemoryBroker()
    config = dataclasses.replace(CONFIG, shards=2)
    a = await ready(broker, config)
    b = await ready(broker, dataclasses.replace(config, shard=1))
    await a.commit_batch([], {b"a": b"old"})
    txn = b.begin()
    txn.send(events("b", 2))
    txn.send_state({b"b": b"open"})
    await a.commit_batch(events("a", 1), {b"a": b"new"})
    assert broker.last_stable_offset(STATE, 1) == 0
    restarted = await ready(broker, config)
    assert await restarted.restore_state() == {b"a": b"new"}
    # The held transaction then commits, and shard 1's restore sees it.
    await txn.commit()
    shard1 = await ready(broker, dataclasses.replace(config, shard=1))
    assert await shard1.restore_state() == {b"b": b"open"}
