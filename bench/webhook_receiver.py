"""Webhook receiver alone: request -> 200 latency (`python -m bench.webhook_receiver`).

Signed v1 deliveries arrive open-loop at `--rate` per second for `--seconds` over real HTTP on
127.0.0.1, into a WebhookServer whose intake commits instantly. The figure is the receiver's own
cost (body read, signature check, parse, answer) plus the client in the same process: the floor
under the full path (intake -> Kafka commit -> 200) that `make bench` measures.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
import orjson

from ingestor.logs import configure_logging
from ingestor.signature import sign
from ingestor.webhook import Ack, Delivery, WebhookServer

SECRET = "whsec_benchReceiver"


async def _intake(_delivery: Delivery) -> Ack:
    return Ack.COMMITTED


async def measure(rate: float, seconds: float, padding: int) -> list[float]:
    latencies: list[float] = []
    async with (
        WebhookServer(
            _intake,
            host="127.0.0.1",
            port=0,
            secrets=[SECRET],
            tolerance_seconds=300,
            max_body_bytes=1 << 20,
        ) as server,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as http,
    ):

        async def one(i: int) -> None:
            body = orjson.dumps(
                {
                    "id": f"evt_bench{i:08d}",
                    "object": "event",
                    "type": "charge.succeeded",
                    "created": int(time.time()),
                    "data": {"object": {"id": f"ch_bench{i:08d}", "pad": "x" * padding}},
                }
            )
            headers = {"Stripe-Signature": sign(body, SECRET, int(time.time()))}
            started = time.perf_counter()
            async with http.post(server.url, data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"delivery {i}: HTTP {response.status}")
            latencies.append(time.perf_counter() - started)

        count = int(rate * seconds)
        began = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for i in range(count):
                tg.create_task(one(i))
                await asyncio.sleep(max(0.0, began + (i + 1) / rate - time.perf_counter()))
    return sorted(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="deliveries per second")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--padding", type=int, default=2000, help="extra bytes per event")
    args = parser.parse_args()
    configure_logging("warning")
    lat = asyncio.run(measure(args.rate, args.seconds, args.padding))

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(len(lat) * q))] * 1000

    print(
        f"{len(lat)} deliveries at {args.rate:g}/s: p50 {pct(0.5):.1f} ms, "
        f"p99 {pct(0.99):.1f} ms, max {lat[-1] * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
