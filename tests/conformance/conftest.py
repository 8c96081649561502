"""Fixtures: the simulator in a background thread (own event loop) and a stripe SDK client on it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import stripe

from ingestor.sim import SimServer, Simulator, load_scenario

KEY = "sk_test_conformance"


@dataclass
class RunningSim:
    """A started SimServer owned by another thread; `sim` is safe to read between requests."""

    url: str
    sim: Simulator


@pytest.fixture(scope="module")
def running_sim() -> Iterator[RunningSim]:
    """The default scenario (seed 7) served on 127.0.0.1 from a thread with its own loop, since
    the stripe SDK is synchronous."""
    ready = threading.Event()
    box: dict[str, object] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        box["stop"], box["loop"] = stop, asyncio.get_running_loop()
        try:
            async with SimServer(load_scenario(None), seed=7) as server:
                box["server"] = server
                ready.set()
                await stop.wait()
        finally:
            ready.set()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(60), "simulator did not start"
    server = box.get("server")
    assert isinstance(server, SimServer), "simulator failed to start"
    yield RunningSim(server.url, server.sim)
    loop = box["loop"]
    stop = box["stop"]
    assert isinstance(loop, asyncio.AbstractEventLoop)
    assert isinstance(stop, asyncio.Event)
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)
    assert not thread.is_alive()


@pytest.fixture
def client(running_sim: RunningSim) -> stripe.StripeClient:
    """An SDK client aimed at the simulator for api and file uploads, no retries (so a failure
    shows up as the error the simulator sent)."""
    return stripe.StripeClient(
        KEY,
        base_addresses={"api": running_sim.url, "files": running_sim.url},
        max_network_retries=0,
    )
