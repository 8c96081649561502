"""Shards: the stable account hash, its spread, the state topic's partition check, and how
group assignments start and stop shard pipelines (a fake group consumer)."""

from __future__ import annotations

import asyncio
import collections
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import ConsumerRebalanceListener, TopicPartition

from ingestor.config import KafkaConfig
from ingestor.errors import StatePartitionMismatch
from ingestor.events import Stream
from ingestor.metrics import REGISTRY
from ingestor.shards import (
    ShardGroup,
    ShardSet,
    check_state_partitions,
    shard_of,
    streams_by_shard,
)


def test_shard_of_is_pinned_to_crc32_of_the_account_id() -> None:
    """The mapping is crc32(account id, or "platform") mod shards, with these exact values: a
    change here moves accounts between shards and orphans their state, so it must fail a test."""
    assert shard_of(None, 8) == zlib.crc32(b"platform") % 8 == 3
    assert shard_of("acct_1", 8) == 1
    assert shard_of("acct_1Nv0FGQ9RKHgCVdK", 8) == 7
    assert [shard_of(f"acct_sim{i:04d}", 6) for i in range(8)] == [1, 3, 5, 3, 2, 4, 4, 4]


def test_one_shard_takes_every_account() -> None:
    """With one shard (the default) everything is shard 0: one process owns it all."""
    assert {shard_of(f"acct_{i}", 1) for i in range(100)} | {shard_of(None, 1)} == {0}


def test_shard_of_spreads_many_accounts_evenly() -> None:
    """10,000 account ids over 12 shards: every shard within 10% of the mean."""
    counts = collections.Counter(shard_of(f"acct_{i:016x}", 12) for i in range(10_000))
    mean = 10_000 / 12
    assert set(counts) == set(range(12))
    assert all(abs(c - mean) < 0.1 * mean for c in counts.values()), counts


def test_shard_of_refuses_no_shards() -> None:
    """A shard count below 1 is an error, not a division by zero."""
    with pytest.raises(ValueError, match="shards"):
        shard_of("acct_1", 0)


def test_both_apis_of_an_account_share_a_shard_and_empty_shards_are_listed() -> None:
    """streams_by_shard keeps v1 and v2 of one account together and lists every shard."""
    streams = [Stream(api, acct) for acct in (None, "acct_a", "acct_b") for api in ("v1", "v2")]
    by_shard = streams_by_shard(streams, 16)
    assert sorted(by_shard) == list(range(16))
    for acct in (None, "acct_a", "acct_b"):
        home = by_shard[shard_of(acct, 16)]
        assert Stream("v1", acct) in home
        assert Stream("v2", acct) in home
    assert sum(len(v) for v in by_shard.values()) == 6


def test_a_state_topic_with_another_partition_count_is_refused_with_the_fix() -> None:
    """A 1-partition state topic (written before shards) under kafka.shards = 4 is refused in
    one line that names the fix; a matching count passes."""
    check_state_partitions("p._ingestor_state", 4, 4)
    with pytest.raises(StatePartitionMismatch) as raised:
        check_state_partitions("p._ingestor_state", 1, 4)
    message = str(raised.value)
    assert "\n" not in message
    assert "has 1 partition(s) but kafka.shards = 4" in message
    assert "set kafka.shards = 1" in message
    assert not StatePartitionMismatch.retriable


# --- assignment handling ------------------------------------------------------------------------


class FakeConsumer:
    """Plays the group coordinator: the test queues assignments; `getmany` runs each as aiokafka
    does (revoke the previous assignment, then assign the new one) through the listener."""

    def __init__(self) -> None:
        self.listener: ConsumerRebalanceListener | None = None
        self.topics: list[str] = []
        self.rebalances: asyncio.Queue[set[int]] = asyncio.Queue()
        self.current: set[int] | None = None
        self.started = False
        self.stopped = False
        self.done = 0

    def subscribe(self, topics: list[str], *, listener: ConsumerRebalanceListener) -> None:
        self.topics = topics
        self.listener = listener

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def getmany(self, *, timeout_ms: int) -> dict[Any, Any]:
        assert self.listener is not None
        try:
            new = await asyncio.wait_for(self.rebalances.get(), timeout_ms / 1000)
        except TimeoutError:
            return {}
        if self.current is not None:
            await self.listener.on_partitions_revoked(
                {TopicPartition("p._ingestor_shards", n) for n in self.current}
            )
        self.current = new
        await self.listener.on_partitions_assigned(
            {TopicPartition("p._ingestor_shards", n) for n in new}
        )
        self.done += 1
        return {}


def owned(shard: int) -> float | None:
    return REGISTRY.get_sample_value("ingestor_shard_owned", {"shard": str(shard)})


async def wait_for(cond: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not cond():  # noqa: ASYNC110 - polling state another task changes
            await asyncio.sleep(0.01)


async def test_the_group_assignment_starts_and_stops_shard_pipelines() -> None:
    """Assigned shards each get a running pipeline; on a rebalance every revoked shard's
    pipeline has stopped (drained) before the new assignment starts, a shard is never run
    twice at once, the metric follows ownership, and a stop releases all then leaves."""
    config = KafkaConfig(topic_prefix="p", shards=3)
    fake = FakeConsumer()
    running: dict[int, int] = collections.Counter()
    history: list[tuple[str, int]] = []

    async def run(shard: int, stop: asyncio.Event) -> None:
        running[shard] += 1
        assert running[shard] == 1, "a shard ran twice at once"
        history.append(("start", shard))
        await stop.wait()
        await asyncio.sleep(0.05)  # draining
        history.append(("stop", shard))
        running[shard] -= 1

    async def no_topic(_c: KafkaConfig) -> None:
        return None

    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        shards = ShardSet(tg, run, release_timeout=5)
        group = ShardGroup(config, shards, consumer=lambda _c: fake, ensure_topic=no_topic)
        member = tg.create_task(group.run(stop))
        fake.rebalances.put_nowait({0, 2})
        await wait_for(lambda: fake.done == 1)
        assert shards.owned == {0, 2}
        await wait_for(lambda: set(running) == {0, 2})
        assert (owned(0), owned(1), owned(2)) == (1, 0, 1)
        fake.rebalances.put_nowait({1, 2})
        await wait_for(lambda: fake.done == 2)
        assert shards.owned == {1, 2}
        assert (owned(0), owned(1), owned(2)) == (0, 1, 1)
        await wait_for(lambda: len(history) == 6)
        # Both revoked pipelines stopped before either shard of the new assignment started.
        assert [what for what, _s in history] == [
            "start",
            "start",
            "stop",
            "stop",
            "start",
            "start",
        ]
        assert {s for _w, s in history[2:4]} == {0, 2}
        assert {s for _w, s in history[4:]} == {1, 2}
        stop.set()
        await member
    assert fake.topics == ["p._ingestor_shards"]
    assert fake.stopped
    assert shards.owned == set()
    assert (owned(0), owned(1), owned(2)) == (0, 0, 0)
    assert dict(running) == {0: 0, 1: 0, 2: 0}


async def test_a_shard_that_does_not_drain_in_time_is_cancelled_and_released() -> None:
    """A pipeline still running at the release timeout is cancelled, so the revoke returns
    within the rebalance timeout and the shard is released."""
    cancelled: list[int] = []

    async def stuck(shard: int, _stop: asyncio.Event) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(shard)
            raise

    async with asyncio.TaskGroup() as tg:
        shards = ShardSet(tg, stuck, release_timeout=0.2)
        await shards.assigned([4])
        await asyncio.sleep(0)
        async with asyncio.timeout(2):
            await shards.revoked([4])
        assert shards.owned == set()
    assert cancelled == [4]
    assert owned(4) == 0


async def test_a_cancelled_owner_cancels_its_shards_instead_of_draining() -> None:
    """When the process itself is cancelled (a crash), releasing its shards does not wait for a
    drain: the shard pipelines are cancelled at once, as a killed process would stop."""
    drained: list[int] = []
    cancelled: list[int] = []

    async def run(shard: int, stop: asyncio.Event) -> None:
        try:
            await stop.wait()
            await asyncio.sleep(60)  # a long drain
            drained.append(shard)
        except asyncio.CancelledError:
            cancelled.append(shard)
            raise

    async def owner(shards: ShardSet) -> None:
        await shards.assigned([0, 1])
        try:
            await asyncio.Event().wait()
        finally:
            await shards.release_all()

    async with asyncio.timeout(5), asyncio.TaskGroup() as tg:
        shards = ShardSet(tg, run, release_timeout=30)
        task = tg.create_task(owner(shards))
        await asyncio.sleep(0.05)
        task.cancel()
    assert sorted(cancelled) == [0, 1]
    assert drained == []
    assert shards.owned == set()
