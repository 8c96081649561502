"""Kafka state restore: the state topic read to its end, read_committed, latest value per key."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


async def read_state(
    client_kwargs: dict[str, Any],
    *,
    client_id: str,
    topic: str,
    partitions: list[int],
    round_seconds: float,
) -> dict[bytes, bytes]:
    """Reads `topic` from its beginning to its last stable offset with read_committed.

    Returns the latest value per key; a tombstone (value None) deletes the key. Each round of
    reading must make progress within `round_seconds`: a long topic may take longer than that in
    total, a stalled broker may not. The caller initialises the shard's producer first, so an
    open transaction of an older incarnation is aborted and does not hold the end offset back.
    """
    consumer = AIOKafkaConsumer(
        **client_kwargs,
        client_id=f"{client_id}-restore",
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        # Its first offsets request waits for the topic's metadata; the 100 ms default
        # backoff would be most of a fresh start's restore.
        retry_backoff_ms=20,
    )
    state: dict[bytes, bytes] = {}
    try:
        async with asyncio.timeout(round_seconds):
            await consumer.start()
            tps = [TopicPartition(topic, p) for p in partitions]
            # With read_committed this is the last stable offset: everything before it is
            # decided (committed or aborted). Asked before `assign`: once partitions are
            # assigned, the consumer long-polls them (fetch_max_wait_ms, 500 ms) on the same
            # connection, and the broker answers this request only after that fetch.
            end: dict[TopicPartition, int] = await consumer.end_offsets(tps)
            pending = {tp for tp in tps if end[tp] > 0}
            if pending:
                consumer.assign(sorted(pending))
                await consumer.seek_to_beginning(*pending)
        while pending:
            async with asyncio.timeout(round_seconds):
                batches = await consumer.getmany(*pending, timeout_ms=1000)
                for tp, messages in batches.items():
                    for message in messages:
                        if message.offset >= end[tp] or message.key is None:
                            continue
                        if message.value is None:
                            state.pop(message.key, None)
                        else:
                            state[message.key] = message.value
                for tp in list(pending):
                    if await consumer.position(tp) >= end[tp]:
                        pending.discard(tp)
    finally:
        await consumer.stop()
    return state


__all__ = ["read_state"]
