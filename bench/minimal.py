"""The minimal pipeline a CPU-bound backfill is measured against: sequential paging, plain send.

One `starting_after` cursor over `GET /v1/events` (limit 100), each event re-serialised and sent
with a plain aiokafka producer (no transactions) to one topic, keyed by event id; no dedupe,
state, ordering or transactions. Run as `python -m bench.minimal URL BOOTSTRAP TOPIC`; prints
the number of events sent.
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer

API_KEY = "sk_test_bench_0123456789"


async def minimal(url: str, bootstrap: str, topic: str) -> int:
    """Pages every event newest first and produces each one; returns how many it sent."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, compression_type="zstd", linger_ms=5, max_batch_size=1 << 20
    )
    await producer.start()
    sent = 0
    try:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        cursor: str | None = None
        async with aiohttp.ClientSession(headers=headers) as session:
            while True:
                params = {"limit": "100"}
                if cursor is not None:
                    params["starting_after"] = cursor
                async with session.get(url + "/v1/events", params=params) as r:
                    r.raise_for_status()
                    body = orjson.loads(await r.read())
                for event in body["data"]:
                    await producer.send(
                        topic, orjson.dumps(event), key=event["id"].encode()
                    )  # enqueues into a batch; delivery is awaited by flush below
                    sent += 1
                if not body["has_more"]:
                    break
                cursor = body["data"][-1]["id"]
        await producer.flush()
    finally:
        await producer.stop()
    return sent


def main(argv: list[str]) -> int:
    url, bootstrap, topic = argv
    print(asyncio.run(minimal(url, bootstrap, topic)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
