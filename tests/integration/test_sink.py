"""The Kafka sink against a real broker: transactions, state restore, fencing, DLQ, topics."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from ingestor.config import KafkaConfig, Secret
from ingestor.errors import ClosedError, Fenced, KafkaUnavailable
from ingestor.events import Record
from ingestor.metrics import REGISTRY
from ingestor.route import record_size
from ingestor.sink import BatchResult, Sink
from tests.integration.kafka_util import Broker, read_all, second_broker, undecided_offsets


@pytest.fixture
def config(bootstrap: str, topic_prefix: str) -> KafkaConfig:
    return KafkaConfig(
        bootstrap_servers=bootstrap,
        topic_prefix=topic_prefix,
        topic_partitions=3,
        request_timeout=10.0,
    )


@pytest.fixture
async def sink(config: KafkaConfig) -> AsyncIterator[Sink]:
    async with Sink(config) as s:
        yield s


def events(topic: str, tag: str, n: int, size: int = 200) -> list[Record]:
    """n records on topic, keyed by 4 object ids, value padded to about `size` bytes."""
    out = []
    for i in range(n):
        event_id = f"evt_{tag}_{i}"
        value = orjson.dumps({"id": event_id, "pad": "x" * size})
        out.append(
            Record(
                topic=topic,
                key=f"obj_{i % 4}".encode(),
                value=value,
                headers=(("event_id", event_id.encode()), ("event_type", b"charge.updated")),
                event_id=event_id,
            )
        )
    return out


def ids(records: list[Any]) -> list[str]:
    return [orjson.loads(r.value)["id"] for r in records]


def dlq_count() -> float:
    return REGISTRY.get_sample_value("ingestor_dlq_events_total", {"reason": "too_large"}) or 0.0


async def test_committed_batch_is_visible_and_restore_returns_latest_state_per_key(
    sink: Sink, config: KafkaConfig
) -> None:
    topic = f"{config.topic_prefix}.charge.updated"
    first = events(topic, "a", 10)
    second = events(topic, "b", 5)

    assert await sink.commit_batch(first, {b"v1:platform": b"s1", b"v2:platform": b"t1"}) == (
        BatchResult(published=10, dlq=0)
    )
    assert await sink.commit_batch(second, {b"v1:platform": b"s2"}) == BatchResult(5, 0)
    assert sink.healthy

    seen = await read_all(config.bootstrap_servers, [topic])
    assert sorted(ids(seen)) == sorted(ids(first) + ids(second))
    # Same key, same partition, commit order kept.
    by_key: dict[bytes, list[str]] = {}
    for r in seen:
        by_key.setdefault(r.key, []).append(orjson.loads(r.value)["id"])
    assert by_key[b"obj_0"] == ["evt_a_0", "evt_a_4", "evt_a_8", "evt_b_0", "evt_b_4"]
    assert dict(seen[0].headers)["event_type"] == b"charge.updated"

    state_records = await read_all(config.bootstrap_servers, [config.state_topic])
    assert len(state_records) == 3
    assert await sink.restore_state() == {b"v1:platform": b"s2", b"v2:platform": b"t1"}


async def test_restore_state_on_a_new_topic_is_empty_and_tombstones_delete(
    sink: Sink, config: KafkaConfig
) -> None:
    assert await sink.restore_state() == {}
    await sink.commit_batch([], {b"a": b"1", b"b": b"1"})
    await sink.commit_batch([], {b"a": None, b"b": b"2"})
    assert await sink.restore_state() == {b"b": b"2"}
    # A fresh sink (a restarted process) sees the same.
    async with Sink(config) as again:
        assert await again.restore_state() == {b"b": b"2"}


async def test_failed_batch_after_sends_is_aborted_and_invisible_to_read_committed(
    sink: Sink, config: KafkaConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = f"{config.topic_prefix}.charge.updated"
    await sink.commit_batch(events(topic, "ok1", 3), {b"p": b"1"})

    real_check = sink._check_acks

    def acked_then_fail(results: list[Any], *, records: int) -> None:
        real_check(results, records=records)  # every record really reached the broker
        raise RuntimeError("simulated crash between acks and commit")

    monkeypatch.setattr(sink, "_check_acks", acked_then_fail)
    with pytest.raises(KafkaUnavailable, match="simulated crash"):
        await sink.commit_batch(events(topic, "lost", 4), {b"p": b"2"})
    assert not sink.healthy
    monkeypatch.undo()

    # Contract: restore first; it shows the last committed state, not the failed one.
    assert await sink.restore_state() == {b"p": b"1"}
    await sink.commit_batch(events(topic, "ok2", 2), {b"p": b"3"})

    committed = await read_all(config.bootstrap_servers, [topic])
    assert sorted(ids(committed)) == sorted(ids(events(topic, "ok1", 3) + events(topic, "ok2", 2)))
    everything = await read_all(
        config.bootstrap_servers, [topic], isolation_level="read_uncommitted"
    )
    assert sum(i.startswith("evt_lost_") for i in ids(everything)) == 4  # written, then aborted
    assert await sink.restore_state() == {b"p": b"3"}


async def test_restore_after_a_crash_mid_transaction_aborts_it_without_waiting_for_timeout(
    config: KafkaConfig,
) -> None:
    topic = f"{config.topic_prefix}.charge.updated"
    async with Sink(config) as sink:
        assert not sink.healthy  # nothing has talked to Kafka yet
        await sink.commit_batch(events(topic, "ok", 3), {b"p": b"1"})

    # A process killed mid-batch: records and state acknowledged, no commit, no abort.
    crashed = AIOKafkaProducer(
        bootstrap_servers=config.bootstrap_servers,
        transactional_id=config.effective_transactional_id,
    )
    await crashed.start()
    await crashed.begin_transaction()
    for r in events(topic, "crashed", 3):
        await crashed.send_and_wait(r.topic, r.value, key=r.key)
    await crashed.send_and_wait(config.state_topic, b"2", key=b"p")
    await crashed.stop()
    assert await undecided_offsets(config.bootstrap_servers, [topic, config.state_topic]) > 0

    started = time.monotonic()
    async with Sink(config) as restarted:
        assert await restarted.restore_state() == {b"p": b"1"}
    # Far below the 60 s transaction timeout: initialising the producer aborted it.
    assert time.monotonic() - started < 10
    assert await undecided_offsets(config.bootstrap_servers, [topic, config.state_topic]) == 0
    assert sorted(ids(await read_all(config.bootstrap_servers, [topic]))) == sorted(
        ids(events(topic, "ok", 3))
    )


async def test_second_sink_with_same_transactional_id_fences_the_first(
    config: KafkaConfig,
) -> None:
    topic = f"{config.topic_prefix}.charge.updated"
    async with Sink(config) as first:
        await first.commit_batch(events(topic, "first", 3), {b"p": b"first"})
        async with Sink(config) as second:
            assert second.transactional_id == first.transactional_id
            # Restoring initialises the new owner's producer: that is what fences.
            assert await second.restore_state() == {b"p": b"first"}

            with pytest.raises(Fenced):
                await first.commit_batch(events(topic, "zombie", 3), {b"p": b"zombie"})
            assert not first.healthy
            # A fenced sink stays fenced: it never re-initialises and fences the owner back.
            with pytest.raises(Fenced):
                await first.commit_batch(events(topic, "zombie2", 3), {b"p": b"zombie"})
            with pytest.raises(Fenced):
                await first.restore_state()

            await second.commit_batch(events(topic, "second", 2), {b"p": b"second"})
            assert second.healthy

    seen = ids(await read_all(config.bootstrap_servers, [topic]))
    assert sorted(seen) == sorted(ids(events(topic, "first", 3) + events(topic, "second", 2)))
    async with Sink(config) as third:
        assert await third.restore_state() == {b"p": b"second"}


async def test_oversized_record_goes_to_dlq_with_reason_and_rest_of_batch_commits(
    config: KafkaConfig,
) -> None:
    config = dataclasses.replace(config, max_message_bytes=10_000)
    topic = f"{config.topic_prefix}.file.created"
    batch = events(topic, "small", 5)
    big = events(topic, "big", 1, size=20_000)[0]
    before = dlq_count()

    async with Sink(config) as sink:
        result = await sink.commit_batch([*batch[:2], big, *batch[2:]], {b"p": b"1"})
    assert result == BatchResult(published=5, dlq=1)
    assert dlq_count() == before + 1

    assert sorted(ids(await read_all(config.bootstrap_servers, [topic]))) == sorted(ids(batch))
    (dead,) = await read_all(config.bootstrap_servers, [config.dlq_topic])
    headers = dict(dead.headers)
    assert headers["dlq_reason"] == b"too_large"
    size = record_size(big)  # the one size estimate, shared with the router's DLQ records
    assert headers["dlq_detail"] == f"{size} bytes > 10000".encode()
    assert headers["event_id"] == b"evt_big_0"
    assert dead.key == big.key
    assert orjson.loads(dead.value) == {
        "event_id": "evt_big_0",
        "event_type": "charge.updated",
        "reason": "too_large",
        "size": size,
    }


@pytest.mark.parametrize("delivery", ["exactly_once", "at_least_once"])
async def test_record_the_broker_rejects_as_too_large_is_diverted_and_batch_retried(
    config: KafkaConfig, delivery: Literal["exactly_once", "at_least_once"]
) -> None:
    # The pre-check allows 100 KB, but this topic (made by someone else) accepts only 4 KB.
    config = dataclasses.replace(
        config, max_message_bytes=100_000, compression="none", delivery=delivery
    )
    topic = f"{config.topic_prefix}.tight"
    admin = AIOKafkaAdminClient(bootstrap_servers=config.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "4096"})]
        )
    finally:
        await admin.close()
    small = events(topic, "small", 4, size=100)
    big = events(topic, "big", 1, size=8_000)[0]
    before = dlq_count()

    async with Sink(config) as sink:
        result = await sink.commit_batch([small[0], big, *small[1:]], {b"p": b"1"})
        assert result == BatchResult(published=4, dlq=1)
        assert await sink.restore_state() == {b"p": b"1"}
    assert dlq_count() == before + 1

    # Every small record exactly once, in order (at_least_once resends only refused records).
    assert ids(await read_all(config.bootstrap_servers, [topic])) == ids(small)
    (dead,) = await read_all(config.bootstrap_servers, [config.dlq_topic])
    assert dict(dead.headers)["dlq_reason"] == b"too_large"
    size = record_size(big)
    assert dict(dead.headers)["dlq_detail"].startswith(
        f"{size} bytes refused by the broker".encode()
    )
    assert orjson.loads(dead.value) == {
        "event_id": "evt_big_0",
        "event_type": "charge.updated",
        "reason": "too_large",
        "size": size,
    }


async def test_topics_get_configured_partitions_and_state_topic_is_compacted(
    config: KafkaConfig,
) -> None:
    config = dataclasses.replace(config, topic_partitions=4, shards=2)
    names = [f"{config.topic_prefix}.a", f"{config.topic_prefix}.b"]
    async with Sink(config) as sink, Sink(config) as other:
        # Concurrent and repeated calls for the same names, from two sinks, all succeed.
        await asyncio.gather(
            sink.ensure_topics([*names, config.state_topic, config.dlq_topic]),
            sink.ensure_topics(names),
            other.ensure_topics([*names, config.state_topic]),
        )
        await sink.ensure_topics(names)

    admin = AIOKafkaAdminClient(bootstrap_servers=config.bootstrap_servers)
    await admin.start()
    try:
        described = {
            t["topic"]: len(t["partitions"])
            for t in await admin.describe_topics([*names, config.state_topic, config.dlq_topic])
        }
        responses = await admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, config.state_topic),
                ConfigResource(ConfigResourceType.TOPIC, names[0]),
            ]
        )
    finally:
        await admin.close()
    assert described == {
        names[0]: 4,
        names[1]: 4,
        config.state_topic: 2,
        config.dlq_topic: 4,
    }
    policies = {
        resource[3]: {entry[0]: entry[1] for entry in resource[4]}["cleanup.policy"]
        for response in responses
        for resource in response.resources
    }
    assert policies == {config.state_topic: "compact", names[0]: "delete"}


async def test_at_least_once_publishes_records_then_state_without_transactions(
    config: KafkaConfig,
) -> None:
    config = dataclasses.replace(config, delivery="at_least_once")
    topic = f"{config.topic_prefix}.charge.updated"
    async with Sink(config) as sink:
        assert sink.transactional_id is None
        assert await sink.restore_state() == {}
        result = await sink.commit_batch(events(topic, "a", 20), {b"p": b"1"})
        assert result == BatchResult(published=20, dlq=0)
        await sink.commit_batch(events(topic, "b", 5), {b"p": b"2"})
        assert await sink.restore_state() == {b"p": b"2"}
    seen = await read_all(config.bootstrap_servers, [topic])
    assert sorted(ids(seen)) == sorted(ids(events(topic, "a", 20) + events(topic, "b", 5)))
    # Records were acknowledged before their state record was even sent.
    (state1, state2) = await read_all(config.bootstrap_servers, [config.state_topic])
    last_record_ts = max(r.timestamp for r in seen if ids([r])[0].startswith("evt_a_"))
    assert state1.timestamp >= last_record_ts
    assert state2.value == b"2"


async def test_close_twice_is_safe_and_use_after_close_raises_closed_error(
    config: KafkaConfig,
) -> None:
    sink = Sink(config)
    async with sink:
        await sink.commit_batch([], {b"p": b"1"})
    await sink.close()
    await sink.close()
    assert not sink.healthy
    with pytest.raises(ClosedError):
        await sink.commit_batch([], {b"p": b"2"})
    with pytest.raises(ClosedError):
        await sink.restore_state()
    with pytest.raises(ClosedError):
        await sink.ensure_topics([f"{config.topic_prefix}.x"])
    with pytest.raises(ClosedError):
        async with sink:
            pass


def test_repr_never_shows_the_sasl_password() -> None:
    config = KafkaConfig(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="ingestor",
        sasl_password=Secret("hunter2-very-secret"),
    )
    text = repr(Sink(config))
    assert "hunter2" not in text
    assert "ingestor.stripe.shard-0" in text


@pytest.fixture
async def private_broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with second_broker(tmp_path / "kafka") as broker:
        yield broker


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_broker_restart_fails_commit_quickly_then_recovers_without_duplicates(
    private_broker: Broker, topic_prefix: str
) -> None:
    config = KafkaConfig(
        bootstrap_servers=private_broker.bootstrap,
        topic_prefix=topic_prefix,
        topic_partitions=2,
        request_timeout=5.0,
    )
    topic = f"{topic_prefix}.charge.updated"
    async with Sink(config) as sink:
        assert await sink.restore_state() == {}
        await sink.commit_batch(events(topic, "before", 10), {b"p": b"1"})

        await private_broker.down()
        started = time.monotonic()
        with pytest.raises(KafkaUnavailable):
            await sink.commit_batch(events(topic, "during", 10), {b"p": b"2"})
        elapsed = time.monotonic() - started
        # The operation's timeout plus bounded clean-up, never an endless retry.
        assert elapsed < 5.0 + 1.0 + 2.0, elapsed
        assert not sink.healthy

        await private_broker.up()
        # Contract: after a failure, restore first; it shows the last committed state.
        assert await sink.restore_state() == {b"p": b"1"}
        await sink.commit_batch(events(topic, "after", 10), {b"p": b"3"})
        assert sink.healthy
        assert await sink.restore_state() == {b"p": b"3"}

    seen = ids(await read_all(private_broker.bootstrap, [topic]))
    assert len(seen) == len(set(seen)) == 20
    assert sorted(seen) == sorted(ids(events(topic, "before", 10) + events(topic, "after", 10)))


async def test_first_batch_to_new_topics_produces_without_not_leader_retries(
    sink: Sink, config: KafkaConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch to ten topics that do not exist yet waits for their partition leaders before
    producing: aiokafka logs no NotLeaderForPartitionError retry, and the batch commits."""
    topics = [f"{config.topic_prefix}.fresh{i}.created" for i in range(10)]
    batch = [r for t in topics for r in events(t, t.rsplit(".", 2)[1], 6)]
    with caplog.at_level("DEBUG", logger="aiokafka"):
        assert await sink.commit_batch(batch, {b"v1:platform": b"s1"}) == BatchResult(60, 0)
    retries = [r.getMessage() for r in caplog.records if "NotLeaderForPartition" in r.getMessage()]
    assert [m for m in retries if "produce" in m.lower()] == []
    records = await read_all(config.bootstrap_servers, f"{config.topic_prefix}\\.fresh.*")
    assert len(records) == 60
