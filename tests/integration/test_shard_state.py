"""State by shard on a real broker: each shard restores its own partition of the state topic."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ingestor.config import KafkaConfig
from ingestor.errors import StatePartitionMismatch
from ingestor.sim.server import SimServer
from ingestor.sink import Sink
from tests.integration.harness import check_output, published, sim_scenario, start


@pytest.fixture
def config(bootstrap: str, topic_prefix: str) -> KafkaConfig:
    return KafkaConfig(
        bootstrap_servers=bootstrap,
        topic_prefix=topic_prefix,
        topic_partitions=1,
        shards=2,
        request_timeout=10.0,
    )


async def _stable_end(bootstrap: str, tp: TopicPartition) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()


async def test_a_shard_restores_while_another_shard_holds_an_open_transaction(
    config: KafkaConfig,
) -> None:
    """Shard 1's producer leaves a transaction open on its state partition; shard 0 commits
    state after that transaction began, and a fresh shard 0 restores that newest state at once
    (its partition's last stable offset is not held back by shard 1)."""
    shard0 = config
    shard1 = dataclasses.replace(config, shard=1)
    async with Sink(shard0) as a:
        assert await a.restore_state() == {}
        await a.commit_batch([], {b"stream-a": b"old"})
    hung = AIOKafkaProducer(
        bootstrap_servers=config.bootstrap_servers,
        transactional_id=shard1.effective_transactional_id,
        enable_idempotence=True,
        transaction_timeout_ms=60_000,
    )
    await hung.start()
    try:
        await hung.begin_transaction()
        await (await hung.send(config.state_topic, b"open", key=b"stream-b", partition=1))
        async with Sink(shard0) as a:
            assert await a.restore_state() == {b"stream-a": b"old"}
            await a.commit_batch([], {b"stream-a": b"new"})
        # The open transaction really holds shard 1's partition back ...
        state1 = TopicPartition(config.state_topic, 1)
        assert await _stable_end(config.bootstrap_servers, state1) == 0
        # ... and shard 0 restores its newest state regardless.
        async with Sink(shard0) as a:
            assert await a.restore_state() == {b"stream-a": b"new"}
        # Shard 1's next owner aborts the open transaction and restores nothing of it.
        async with Sink(shard1) as b:
            assert await b.restore_state() == {}
    finally:
        await hung.stop()


async def test_a_state_topic_with_one_partition_is_refused_under_several_shards(
    config: KafkaConfig,
) -> None:
    """A state topic made by a version before shards (1 partition) is not used under
    kafka.shards = 2: the restore raises one line naming the fix, before anything is written."""
    admin = AIOKafkaAdminClient(bootstrap_servers=config.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(config.state_topic, num_partitions=1, replication_factor=1)]
        )
    finally:
        await admin.close()
    async with Sink(config) as sink:
        with pytest.raises(StatePartitionMismatch, match=r"set kafka\.shards = 1"):
            await sink.restore_state()
    async with Sink(dataclasses.replace(config, shards=1)) as sink:
        assert await sink.restore_state() == {}


async def test_ingestor_run_refuses_a_mismatched_state_topic_with_exit_code_2(
    config: KafkaConfig, tmp_path: Path
) -> None:
    """`ingestor run` with kafka.shards = 2 over a 1-partition state topic exits 2 (bad
    configuration) with one error line that names the fix, and publishes nothing."""
    admin = AIOKafkaAdminClient(bootstrap_servers=config.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(config.state_topic, num_partitions=1, replication_factor=1)]
        )
    finally:
        await admin.close()
    scenario = sim_scenario(history_events=20, live_rate=0.0)
    async with SimServer(scenario, seed=3) as sim:
        p = await start(
            sim.url, config.bootstrap_servers, config.topic_prefix, tmp_path, kafka__shards="2"
        )
        try:
            assert await p.wait(60) == 2
        finally:
            p.kill()
    errors = [d for d in check_output(p) if d.get("level") == "error"]
    assert len(errors) == 1
    assert "set kafka.shards = 1" in errors[0]["error"]
    assert await published(config.bootstrap_servers, config.topic_prefix) == []
