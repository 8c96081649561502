"""Fixtures: the simulator in a background thread (own event loop) and a stripe SDK client on
it; stripe-mock (Stripe's OpenAPI mock server) as a subprocess on free ports."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import stripe

from ingestor.sim import SimServer, Simulator, load_scenario

KEY = "sk_test_conformance"
ROOT = Path(__file__).resolve().parents[2]
# `make install` builds it there (pinned version, see the Makefile).
STRIPE_MOCK_BIN = ROOT / ".venv" / "bin" / "stripe-mock"
_LISTENING = re.compile(r"Listening for HTTP at address: (\S+)")


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
            # No limits: these SDK calls go out back to back with retries off, and what they
            # check is the shape of answers, not Stripe's limits (tests/unit/test_sim_http.py).
            scenario = dataclasses.replace(
                load_scenario(None), rate_limit=0.0, endpoint_rate_limit=0.0
            )
            async with SimServer(scenario, seed=7) as server:
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


@dataclass(frozen=True)
class StripeMock:
    """A running stripe-mock: `url` is its plain-HTTP base address; `log` its output."""

    url: str
    log: Path


@pytest.fixture(scope="module")
def stripe_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StripeMock]:
    """stripe-mock on 127.0.0.1 with ports the OS picks (read back from its output, so no
    other process can take them in between); stopped afterwards. Fails, never skips, when the
    binary is missing: `make install` builds it."""
    assert STRIPE_MOCK_BIN.is_file(), f"missing {STRIPE_MOCK_BIN}: run `make install`"
    log = tmp_path_factory.mktemp("stripe-mock") / "stripe-mock.log"
    # Output to a file, not a pipe: it logs every request, and an unread pipe would fill up
    # and block the server.
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(STRIPE_MOCK_BIN),
                "-http-addr",
                "127.0.0.1:0",
                "-https-addr",
                "127.0.0.1:0",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 30
        while not (found := _LISTENING.search(log.read_text(errors="replace"))):
            assert proc.poll() is None, f"stripe-mock exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "stripe-mock did not start within 30 s"
            time.sleep(0.05)
        yield StripeMock(f"http://{found.group(1)}", log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
