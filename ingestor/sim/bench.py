"""`python -m ingestor.sim.bench`: pages/s the simulator serves on loopback, in its own process."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import socket
import sys

import aiohttp
import orjson

from ingestor.clock import monotonic
from ingestor.sim.scenario import Scenario, load_scenario
from ingestor.sim.server import serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run_sim(port: int, scenario: Scenario, seed: int) -> None:
    asyncio.run(serve("127.0.0.1", port, scenario, seed))


async def _wait_up(url: str, session: aiohttp.ClientSession, deadline: float) -> None:
    while True:
        try:
            async with session.get(url + "/_sim/config") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            if monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)  # the child process gives no other signal that it is up


async def _client(url: str, seconds: float, concurrency: int, limit: int) -> tuple[int, int]:
    pages = events = 0
    headers = {"Authorization": "Bearer sk_test_bench"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        await _wait_up(url, session, monotonic() + 120)
        stop_at = monotonic() + seconds

        async def worker() -> None:
            nonlocal pages, events
            cursor = None
            while monotonic() < stop_at:
                params = {"limit": str(limit)}
                if cursor:
                    params["starting_after"] = cursor
                async with session.get(url + "/v1/events", params=params) as r:
                    body = await r.json(loads=orjson.loads)
                pages += 1
                events += len(body["data"])
                cursor = body["data"][-1]["id"] if body["has_more"] else None

        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(worker())
    return pages, events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--history", type=int, default=200_000)
    args = parser.parse_args(argv)
    scenario = dataclasses.replace(
        load_scenario("bench"),
        history_events=args.history,
        live_rate=0.0,
        latency_min_ms=0.0,
        latency_max_ms=0.0,
        v2_share=0.0,
    )
    port = _free_port()
    child = multiprocessing.get_context("spawn").Process(
        target=_run_sim, args=(port, scenario, 1), daemon=True
    )
    child.start()
    try:
        pages, events = asyncio.run(
            _client(f"http://127.0.0.1:{port}", args.seconds, args.concurrency, args.limit)
        )
    finally:
        child.terminate()
        child.join(10)
    print(
        f"simulator: {pages / args.seconds:,.0f} pages/s, {events / args.seconds:,.0f} events/s "
        f"(limit {args.limit}, {args.concurrency} concurrent clients, {args.history:,} events "
        "of history, no latency or faults, sim in its own process)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
