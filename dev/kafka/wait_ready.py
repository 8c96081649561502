"""Waits until a Kafka broker accepts a produce and a transactional init, or fails."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import uuid

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

TOPIC = "__ingestor_ready_probe"


async def probe(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        try:
            await admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=1)])
        except TopicAlreadyExistsError:
            pass
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"ready-probe-{uuid.uuid4()}",
        request_timeout_ms=10000,
    )
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(TOPIC, b"ready")
    finally:
        await producer.stop()


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--timeout", type=float, default=90.0)
    args = parser.parse_args()
    # Refused connections are expected while the broker boots; the timeout message says enough.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    deadline = time.monotonic() + args.timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            await asyncio.wait_for(probe(args.bootstrap), timeout=20)
            return 0
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            last = exc
            await asyncio.sleep(1.0)
    print(f"kafka: not ready after {args.timeout:.0f}s: {last!r}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
