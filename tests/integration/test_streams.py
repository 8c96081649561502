"""Per-stream behaviour end to end: a revoked account parks its stream only, and the tail
publishes same-second events in Stripe's order (simulator over sockets, the real broker)."""

from __future__ import annotations

import asyncio

import structlog

from ingestor.health import Readiness
from ingestor.pipeline import EXIT_FAILURE, serve
from ingestor.sim.server import SimServer
from tests.integration.harness import (
    check_exactly_once,
    headers,
    make_config,
    metric,
    published,
    sim_scenario,
    until,
    wait_published,
)

REVOKED = "acct_1RevokedAccess00000"


async def test_a_revoked_account_parks_its_streams_and_the_others_are_ingested(
    bootstrap: str, topic_prefix: str
) -> None:
    """Finding 6: a 403 for one connected account (revoked access) parks that account's
    streams (one error line each, `ingestor_stream_parked`=1) while the platform's events are
    all published; `--once` then exits 1 rather than crash-looping or exiting early."""
    scenario = sim_scenario(history_events=400, accounts=())
    async with SimServer(scenario, seed=41) as server:
        loaded = make_config(
            server.url, bootstrap, topic_prefix, stripe__accounts=f"platform,{REVOKED}"
        )
        with structlog.testing.capture_logs() as logs:
            code = await serve(loaded, backfill=True, once=True)
        truth = server.sim.truth()
    assert code == EXIT_FAILURE
    parked = [e for e in logs if e["event"].startswith("stream parked")]
    assert sorted(e["stream"] for e in parked) == [f"v1:{REVOKED}", f"v2:{REVOKED}"]
    assert all(e["kind"] == "StripeAuthError" for e in parked)
    assert metric("ingestor_stream_parked", stream=f"v1:{REVOKED}") == 1
    records = await wait_published(bootstrap, topic_prefix, {t["id"] for t in truth})
    check_exactly_once(records, truth, topic_prefix)


async def test_a_parked_stream_shows_in_readyz_and_the_service_keeps_serving(
    bootstrap: str, topic_prefix: str
) -> None:
    """Finding 6, long-running: the process stays up and ready, the parked streams are a
    detail of readiness, and live events of the healthy streams keep flowing."""
    scenario = sim_scenario(history_events=20, accounts=())
    async with SimServer(scenario, seed=42) as server:
        loaded = make_config(
            server.url, bootstrap, topic_prefix, stripe__accounts=f"platform,{REVOKED}"
        )
        stop = asyncio.Event()
        readiness = Readiness()
        run = asyncio.create_task(serve(loaded, stop=stop, readiness=readiness))
        try:
            await until(lambda: len(readiness.parked) == 2, within=20)
            ids = set(server.sim.add_events(30, type="charge.updated"))
            await wait_published(bootstrap, topic_prefix, ids)
            assert readiness.ready()
            assert set(readiness.parked) == {f"v1:{REVOKED}", f"v2:{REVOKED}"}
            assert not run.done()
        finally:
            stop.set()
        assert await asyncio.wait_for(run, 15) == 0


async def test_the_tail_publishes_same_second_events_of_an_object_in_stripe_order(
    bootstrap: str, topic_prefix: str
) -> None:
    """Finding 3: events of one object created in the same second reach its partition in
    the order Stripe created them (its newest-first list, reversed), not reversed."""
    scenario = sim_scenario(history_events=30, accounts=())
    async with SimServer(scenario, seed=43) as server:
        loaded = make_config(server.url, bootstrap, topic_prefix, stripe__v2=False)
        stop = asyncio.Event()
        readiness = Readiness()
        run = asyncio.create_task(serve(loaded, stop=stop, readiness=readiness))
        try:
            await until(lambda: readiness.last_poll_ok_monotonic is not None, within=20)
            sim = server.sim
            charge = next(
                t["object_id"]
                for t in sim.truth()
                if t["api"] == "v1" and str(t["object_id"]).startswith("ch_")
            )
            ordered: list[str] = []
            for _ in range(3):
                ordered += sim.add_events(4, type="charge.updated", object_id=charge)
                await asyncio.sleep(1.1)
            await wait_published(bootstrap, topic_prefix, set(ordered))
        finally:
            stop.set()
        assert await asyncio.wait_for(run, 15) == 0
    records = [r for r in await published(bootstrap, topic_prefix) if r.key == charge.encode()]
    records.sort(key=lambda r: r.offset)
    got = [headers(r)["event_id"] for r in records if headers(r)["event_id"] in set(ordered)]
    assert got == ordered
