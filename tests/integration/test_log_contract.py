"""One contract, two logs: the Kafka sink (real broker) and the in-memory log agree on what
read_committed readers see, on state restore, on failed commits and on fencing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from ingestor.config import KafkaConfig
from ingestor.errors import Fenced, KafkaUnavailable
from ingestor.events import Record
from ingestor.log import BatchResult, TransactionalLog
from ingestor.log.kafka_writer import KafkaLog
from ingestor.log.memory import MemoryBroker, MemoryLog
from ingestor.log.partition import CachingPartitioner
from tests.integration.kafka_util import read_all


@dataclass(frozen=True)
class Seen:
    """A record as a read_committed consumer sees it."""

    partition: int
    key: bytes | None
    event_id: str


class Backend:
    """Makes writers of one log and reads it back as a read_committed consumer would."""

    name = ""

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config

    def writer(self) -> TransactionalLog:
        raise NotImplementedError

    async def committed(self, topic: str) -> list[Seen]:
        raise NotImplementedError

    @contextlib.contextmanager
    def next_commit_fails(self, log: TransactionalLog) -> Iterator[None]:
        """The next commit of `log` fails with its outcome: not committed."""
        raise NotImplementedError
        yield


class KafkaBackend(Backend):
    name = "kafka"

    def __init__(self, config: KafkaConfig, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(config)
        self._monkeypatch = monkeypatch

    def writer(self) -> TransactionalLog:
        return KafkaLog(self.config)

    async def committed(self, topic: str) -> list[Seen]:
        records = await read_all(self.config.bootstrap_servers, [topic])
        return [Seen(r.partition, r.key, orjson.loads(r.value)["id"]) for r in records]

    @contextlib.contextmanager
    def next_commit_fails(self, log: TransactionalLog) -> Iterator[None]:
        assert isinstance(log, KafkaLog)
        real = log._check_acks

        def acked_then_fail(results: list[Any], *, records: int) -> None:
            real(results, records=records)  # every record really reached the broker
            raise RuntimeError("simulated failure between acks and commit")

        with self._monkeypatch.context() as mp:
            mp.setattr(log, "_check_acks", acked_then_fail)
            yield


class MemoryBackend(Backend):
    name = "memory"

    def __init__(self, config: KafkaConfig) -> None:
        super().__init__(config)
        self.broker = MemoryBroker()

    def writer(self) -> TransactionalLog:
        return MemoryLog(self.broker, self.config)

    async def committed(self, topic: str) -> list[Seen]:
        return [
            Seen(r.partition, r.key, orjson.loads(r.value or b"")["id"])
            for r in self.broker.read_committed(topic)
        ]

    @contextlib.contextmanager
    def next_commit_fails(self, log: TransactionalLog) -> Iterator[None]:
        self.broker.fail_next_commit("unavailable")
        yield


@pytest.fixture(params=["kafka", "memory"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    # Sync on purpose: only the Kafka case needs the (async) topic_prefix fixture, and an async
    # fixture cannot ask for another one by name while the loop is running.
    if request.param == "kafka":
        bootstrap: str = request.getfixturevalue("bootstrap")
        prefix: str = request.getfixturevalue("topic_prefix")
        config = KafkaConfig(
            bootstrap_servers=bootstrap,
            topic_prefix=prefix,
            topic_partitions=3,
            request_timeout=10.0,
        )
        yield KafkaBackend(config, monkeypatch)
    else:
        yield MemoryBackend(KafkaConfig(topic_prefix="mem", topic_partitions=3))


def events(topic: str, tag: str, n: int) -> list[Record]:
    out = []
    for i in range(n):
        event_id = f"evt_{tag}_{i}"
        out.append(
            Record(
                topic,
                f"obj_{i % 4}".encode(),
                orjson.dumps({"id": event_id}),
                (("event_id", event_id.encode()), ("event_type", b"charge.updated")),
                event_id,
            )
        )
    return out


def topic_of(backend: Backend) -> str:
    return f"{backend.config.topic_prefix}.charge.updated"


async def test_a_commit_is_visible_to_read_committed_readers_in_order_per_key(
    backend: Backend,
) -> None:
    """Committed batches are visible whole, each key on its murmur2 partition, per-key order
    being commit order."""
    topic = topic_of(backend)
    async with backend.writer() as log:
        assert await log.restore_state() == {}
        assert await log.commit_batch(events(topic, "a", 6), {b"s": b"1"}) == BatchResult(6, 0)
        assert await log.commit_batch(events(topic, "b", 5), {b"s": b"2"}) == BatchResult(5, 0)
        assert log.healthy
    seen = await backend.committed(topic)
    assert sorted(s.event_id for s in seen) == sorted(
        [f"evt_a_{i}" for i in range(6)] + [f"evt_b_{i}" for i in range(5)]
    )
    partitioner = CachingPartitioner()
    assert all(s.partition == partitioner(s.key, [0, 1, 2], [0, 1, 2]) for s in seen)
    obj0 = [s.event_id for s in seen if s.key == b"obj_0"]
    assert obj0 == ["evt_a_0", "evt_a_4", "evt_b_0", "evt_b_4"]


async def test_restore_returns_the_latest_state_per_key_for_a_new_writer_too(
    backend: Backend,
) -> None:
    """Restore reads the latest value per key, tombstones delete, and a fresh writer (a
    restarted process) reads the same."""
    async with backend.writer() as log:
        assert await log.restore_state() == {}
        await log.commit_batch([], {b"a": b"1", b"b": b"1", b"c": b"1"})
        await log.commit_batch([], {b"a": None, b"b": b"2"})
        assert await log.restore_state() == {b"b": b"2", b"c": b"1"}
    async with backend.writer() as again:
        assert await again.restore_state() == {b"b": b"2", b"c": b"1"}


async def test_a_failed_commit_is_invisible_and_restore_shows_the_last_committed_state(
    backend: Backend,
) -> None:
    """A commit that fails is all-or-nothing: none of its records or state become visible;
    after the contract's restore the writer goes on."""
    topic = topic_of(backend)
    async with backend.writer() as log:
        await log.restore_state()
        await log.commit_batch(events(topic, "ok", 3), {b"p": b"1"})
        with pytest.raises(KafkaUnavailable), backend.next_commit_fails(log):
            await log.commit_batch(events(topic, "lost", 4), {b"p": b"2"})
        assert not log.healthy
        assert await log.restore_state() == {b"p": b"1"}
        await log.commit_batch(events(topic, "ok2", 2), {b"p": b"3"})
        assert await log.restore_state() == {b"p": b"3"}
    seen = sorted(s.event_id for s in await backend.committed(topic))
    assert seen == ["evt_ok2_0", "evt_ok2_1", "evt_ok_0", "evt_ok_1", "evt_ok_2"]


async def test_a_second_writer_with_the_same_transactional_id_fences_the_first(
    backend: Backend,
) -> None:
    """A second writer's restore fences the first: its commits raise Fenced from then on and
    are never visible; the new owner's are."""
    topic = topic_of(backend)
    async with backend.writer() as first:
        await first.restore_state()
        await first.commit_batch(events(topic, "first", 3), {b"p": b"first"})
        async with backend.writer() as second:
            assert second.transactional_id == first.transactional_id
            assert await second.restore_state() == {b"p": b"first"}
            with pytest.raises(Fenced):
                await first.commit_batch(events(topic, "zombie", 3), {b"p": b"zombie"})
            with pytest.raises(Fenced):
                await first.commit_batch(events(topic, "zombie2", 1), {b"p": b"zombie"})
            assert not first.healthy
            await second.commit_batch(events(topic, "second", 2), {b"p": b"second"})
    seen = sorted(s.event_id for s in await backend.committed(topic))
    assert seen == sorted([f"evt_first_{i}" for i in range(3)] + ["evt_second_0", "evt_second_1"])
    async with backend.writer() as third:
        assert await third.restore_state() == {b"p": b"second"}
