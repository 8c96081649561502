"""The webhook push path end to end: signed deliveries over HTTP into `ingestor run` while the
poller runs (simulator over sockets, real broker), checked against the simulator's truth."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ingestor.health import Readiness
from ingestor.pipeline import serve
from ingestor.signature import sign
from ingestor.sim.server import SimServer
from ingestor.sim.simulator import Simulator
from tests.integration.harness import (
    check_exactly_once,
    headers,
    make_config,
    published,
    sim_scenario,
    until,
    wait_published,
)
from tests.integration.kafka_util import Broker, free_port, second_broker

SECRET = "whsec_integration0123456789abcdef"


class Destination:
    """Stripe's event destination for the test: signs each event's body and POSTs it,
    retrying after any non-2xx with a short backoff; keeps every answer."""

    def __init__(self, sim: Simulator, url: str, session: aiohttp.ClientSession) -> None:
        self.sim = sim
        self.url = url
        self.session = session
        self.statuses: list[tuple[str, int, float]] = []  # (event id, status, when answered)

    def body(self, serial: int) -> bytes:
        views = self.sim.views
        return views.v1_event(serial) if views.api_of(serial) == "v1" else views.v2_event(serial)

    async def post(self, serial: int) -> int:
        body = self.body(serial)
        header = sign(body, SECRET, int(time.time()))
        async with self.session.post(
            self.url, data=body, headers={"Stripe-Signature": header}
        ) as response:
            await response.read()
            self.statuses.append((self.sim.views.event_id(serial), response.status, time.time()))
            return response.status

    async def deliver(self, serial: int, delay: float = 0.0, *, retry: bool = True) -> int:
        await asyncio.sleep(delay)
        backoff = 0.2
        while True:
            try:
                status = await self.post(serial)
            except aiohttp.ClientError:
                status = 0
            if status == 200 or not retry:
                return status
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)


def _serials(sim: Simulator, before: int) -> list[int]:
    return list(range(before, len(sim.events)))


async def _run(loaded: Any, readiness: Readiness) -> tuple[asyncio.Event, asyncio.Task[int]]:
    stop = asyncio.Event()
    task = asyncio.create_task(serve(loaded, stop=stop, readiness=readiness))
    await until(lambda: readiness.ready(), within=30)
    return stop, task


@pytest.mark.timeout(240)
@pytest.mark.parametrize("order", ["strict", "arrival"])
async def test_pushed_and_polled_events_land_exactly_once_whichever_path_was_first(
    bootstrap: str, topic_prefix: str, order: str
) -> None:
    """Deliveries (each event once or twice, shuffled, some before the poller lists them)
    while the poller runs: every event of both apis is published exactly once, each
    delivery is answered 200 in the end, and an event answered 200 is committed."""
    scenario = sim_scenario(history_events=0, history_bursts=0, accounts=())
    port = free_port()
    async with SimServer(scenario, seed=71) as server, aiohttp.ClientSession() as session:
        s = server.sim
        loaded = make_config(
            server.url,
            bootstrap,
            topic_prefix,
            webhook__enabled=True,
            webhook__port=port,
            webhook__order=order,
            webhook__poll_interval_seconds=1,
            webhook__secrets=SECRET,
        )
        readiness = Readiness()
        stop, task = await _run(loaded, readiness)
        dest = Destination(s, f"http://127.0.0.1:{port}/webhooks/stripe", session)
        rng = random.Random(order)
        try:
            before = len(s.events)
            s.add_events(60, type="charge.updated")
            s.add_events(20, api="v2")
            s.add_events(20, lag_seconds=3.0)  # pushed before the list shows them
            serials = _serials(s, before)
            jobs = [dest.deliver(n, rng.uniform(0, 1.5)) for n in serials]
            jobs += [dest.deliver(n, rng.uniform(0, 4)) for n in rng.sample(serials, 30)]
            answers = await asyncio.wait_for(asyncio.gather(*jobs), 120)
            assert set(answers) == {200}
            # Answered 200 means committed: visible to read_committed at once (markers may
            # take a moment to reach every partition, hence the short wait).
            ids = {s.views.event_id(n) for n in serials}
            records = await wait_published(bootstrap, topic_prefix, ids, within=10)
        finally:
            stop.set()
        assert await asyncio.wait_for(task, 20) == 0
        truth = s.truth()
    check_exactly_once(records, truth, topic_prefix)
    modes = {headers(r)["ingest_mode"] for r in records}
    assert "webhook" in modes  # the lagged ones at least were published from the push


@pytest.fixture
async def private_broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with second_broker(tmp_path / "kafka") as broker:
        yield broker


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_kafka_outage_answers_503_until_it_is_back_then_every_event_lands_once(
    private_broker: Broker, topic_prefix: str
) -> None:
    """While Kafka is down no delivery is answered 200 (503s; Stripe retries); after it is
    back the retried deliveries are committed and every event lands exactly once."""
    boot = private_broker.bootstrap
    scenario = sim_scenario(history_events=0, history_bursts=0, accounts=())
    port = free_port()
    async with SimServer(scenario, seed=72) as server, aiohttp.ClientSession() as session:
        s = server.sim
        loaded = make_config(
            server.url,
            boot,
            topic_prefix,
            webhook__enabled=True,
            webhook__port=port,
            webhook__order="arrival",
            webhook__ack_timeout_seconds=3,
            webhook__secrets=SECRET,
            kafka__request_timeout=5,
        )
        readiness = Readiness()
        stop, task = await _run(loaded, readiness)
        dest = Destination(s, f"http://127.0.0.1:{port}/webhooks/stripe", session)
        try:
            before = len(s.events)
            s.add_events(20)
            first = _serials(s, before)
            assert set(await asyncio.gather(*(dest.deliver(n) for n in first))) == {200}

            await private_broker.down()
            down_at = time.time()
            before = len(s.events)
            s.add_events(20)
            s.add_events(5, api="v2")
            during = _serials(s, before)
            once = await asyncio.gather(*(dest.deliver(n, retry=False) for n in during))
            assert 200 not in once, once
            retried = asyncio.gather(*(dest.deliver(n, 0.5) for n in during))
            await asyncio.sleep(3)
            # Down until the broker starts again: it may commit before up() has seen it ready.
            up_at = time.time()
            await private_broker.up()
            assert set(await asyncio.wait_for(retried, 120)) == {200}
            every = {s.views.event_id(n) for n in first + during}
            await wait_published(boot, topic_prefix, every, within=60)
        finally:
            stop.set()
        assert await asyncio.wait_for(task, 20) == 0
        truth = s.truth()
    late_ids = {s.views.event_id(n) for n in during}
    early_200 = [e for e, st, at in dest.statuses if e in late_ids and st == 200 and at < up_at]
    assert early_200 == [], f"answered 200 while Kafka was down (since {down_at})"
    check_exactly_once(await published(boot, topic_prefix), truth, topic_prefix)


@pytest.mark.timeout(240)
async def test_the_simulators_destinations_push_while_the_poller_runs_exactly_once(
    bootstrap: str, topic_prefix: str
) -> None:
    """The simulator's own deliverer (snapshot and thin destinations, with duplicates,
    reordering and late deliveries) pushes to `ingestor run` while it polls: every delivery
    is acknowledged in the end, and every event of both apis is published exactly once."""
    scenario = sim_scenario(history_events=0, history_bursts=0, accounts=())
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhooks/stripe"
    faults = {
        "duplicate_share": 0.2,
        "reorder_share": 0.2,
        "late_share": 0.1,
        "late_min_seconds": 1.0,
        "late_max_seconds": 4.0,
        "backoff_initial_seconds": 0.2,
        "backoff_max_seconds": 2.0,
    }
    async with SimServer(scenario, seed=73) as server, aiohttp.ClientSession() as session:
        s = server.sim
        for kind in ("snapshot", "thin"):
            body = {"url": url, "secret": SECRET, "kind": kind, **faults}
            async with session.post(server.url + "/_sim/webhooks", json=body) as r:
                assert r.status == 200, await r.text()
        loaded = make_config(
            server.url,
            bootstrap,
            topic_prefix,
            webhook__enabled=True,
            webhook__port=port,
            webhook__secrets=SECRET,
            webhook__poll_interval_seconds=1,
        )
        readiness = Readiness()
        stop, task = await _run(loaded, readiness)
        try:
            ids = s.add_events(60) + s.add_events(20, api="v2")
            ids += s.add_events(10, lag_seconds=2.0)
            records = await wait_published(bootstrap, topic_prefix, set(ids), within=60)

            async def acked() -> dict[str, Any]:
                async with session.get(server.url + "/_sim/webhooks") as r:
                    counters: dict[str, Any] = await r.json()
                return counters

            deadline = time.monotonic() + 60
            while True:
                counters = await acked()
                done = sum(d["acked_events"] for d in counters["destinations"])
                if done == len(ids) and not counters["pending"]:
                    break
                assert time.monotonic() < deadline, counters
                await asyncio.sleep(0.5)
        finally:
            stop.set()
        assert await asyncio.wait_for(task, 20) == 0
        truth = s.truth()
    assert all(d["gave_up"] == 0 for d in counters["destinations"]), counters
    check_exactly_once(await published(bootstrap, topic_prefix), truth, topic_prefix)
    assert {headers(r)["event_id"] for r in records} >= set(ids)
