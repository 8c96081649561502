"""The pipeline end to end: simulator over real sockets, the real broker, read_committed checks."""

from __future__ import annotations

import asyncio

import orjson

from ingestor.health import Readiness
from ingestor.metrics import REGISTRY
from ingestor.pipeline import serve
from ingestor.sim.server import SimServer
from tests.integration.harness import (
    check_exactly_once,
    headers,
    make_config,
    published,
    sim_scenario,
    wait_published,
)


async def test_backfill_once_publishes_every_event_exactly_once_with_hydrated_envelopes(
    bootstrap: str, topic_prefix: str
) -> None:
    scenario = sim_scenario(history_events=1500, burst_size=250)
    async with SimServer(scenario, seed=3) as sim:
        loaded = make_config(sim.url, bootstrap, topic_prefix, stripe__accounts="all")
        code = await serve(loaded, backfill=True, once=True)
        assert code == 0
        truth = sim.sim.truth()
    records = await wait_published(bootstrap, topic_prefix, {t["id"] for t in truth})
    by_id = check_exactly_once(records, truth, topic_prefix)
    v2 = [by_id[t["id"]] for t in truth if t["api"] == "v2"]
    assert len(v2) >= 100
    for r in v2:
        env = orjson.loads(r.value)
        assert env["hydration"]["status"] in ("ok", "not_found")
        if env["hydration"]["status"] == "ok":
            assert env["related_object"]["id"] == env["event"]["related_object"]["id"]
    assert {headers(r)["ingest_mode"] for r in records} == {"backfill", "tail"} or {
        headers(r)["ingest_mode"] for r in records
    } == {"backfill"}


def _fetches() -> float:
    return sum(
        REGISTRY.get_sample_value("ingestor_hydration_requests_total", {"result": r}) or 0.0
        for r in ("ok", "not_found", "failed")
    )


async def test_a_thin_backfill_fetches_each_related_object_about_once(
    bootstrap: str, topic_prefix: str
) -> None:
    """A v2 backfill whose objects each have several events spread over pages and slices
    lists ahead of hydration, so an object's later events share its first fetch (in flight
    or kept): at most 1.2 fetches per object (before: one per page it appeared on), and
    still every event exactly once with its object."""
    scenario = sim_scenario(
        history_events=1200,
        history_span_seconds=86400.0,
        history_bursts=0,
        v2_share=1.0,
        events_per_object=5.0,
    )
    async with SimServer(scenario, seed=11) as sim:
        loaded = make_config(
            sim.url,
            bootstrap,
            topic_prefix,
            stripe__v1=False,
            stripe__v2=True,
            stripe__accounts="all",
        )
        before = _fetches()
        assert await serve(loaded, backfill=True, once=True) == 0
        fetches = _fetches() - before
        truth = sim.sim.truth()
    objects = {t["object_id"] for t in truth if t["object_id"]}
    assert len(truth) >= 1000
    assert len(truth) / len(objects) >= 3
    assert fetches <= 1.2 * len(objects), (fetches, len(objects))
    records = await wait_published(bootstrap, topic_prefix, {t["id"] for t in truth})
    by_id = check_exactly_once(records, truth, topic_prefix)
    for t in truth:
        env = orjson.loads(by_id[t["id"]].value)
        assert env["hydration"]["status"] == "ok"
        assert env["related_object"]["id"] == t["object_id"]


async def test_a_restart_after_a_clean_stop_republishes_nothing(
    bootstrap: str, topic_prefix: str
) -> None:
    scenario = sim_scenario(history_events=300, v2_share=0.2)
    async with SimServer(scenario, seed=5) as sim:
        loaded = make_config(sim.url, bootstrap, topic_prefix, stripe__accounts="all")
        assert await serve(loaded, backfill=True, once=True) == 0
        ids = {t["id"] for t in sim.sim.truth()}
        first = await wait_published(bootstrap, topic_prefix, ids)
        assert await serve(loaded, backfill=True, once=True) == 0
        await asyncio.sleep(2)  # let the second run's last transaction markers land
        second = await published(bootstrap, topic_prefix)
    assert len(first) == len(ids)
    assert len(second) == len(first)


async def test_live_tail_catches_late_and_same_second_events_then_stops_cleanly(
    bootstrap: str, topic_prefix: str
) -> None:
    scenario = sim_scenario(history_events=50, accounts=())
    async with SimServer(scenario, seed=9) as sim:
        loaded = make_config(
            sim.url,
            bootstrap,
            topic_prefix,
            tail__overlap_seconds=1,
            tail__sweep_interval_seconds=1,
            tail__sweep_window_seconds=60,
        )
        stop = asyncio.Event()
        readiness = Readiness()
        run = asyncio.create_task(serve(loaded, stop=stop, readiness=readiness))
        try:
            await asyncio.sleep(1.5)
            s = sim.sim
            ids = s.add_events(300, type="charge.updated")  # one second, across page bounds
            ids += s.add_events(5, type="customer.updated", lag_seconds=4)  # behind cursors
            ids += s.add_events(20, api="v2")
            await wait_published(bootstrap, topic_prefix, set(ids))
            assert readiness.ready()
        finally:
            stop.set()
        assert await asyncio.wait_for(run, 10) == 0
        truth = [t for t in sim.sim.truth() if t["id"] in set(ids)]
    records = [
        r for r in await published(bootstrap, topic_prefix) if headers(r)["event_id"] in set(ids)
    ]
    check_exactly_once(records, truth, topic_prefix)
    assert all(headers(r)["ingest_mode"] == "tail" for r in records)


async def test_per_stream_cursor_expired_and_parked_series_are_exported_at_0(
    bootstrap: str, topic_prefix: str
) -> None:
    """Once the streams are known (state restored), ingestor_cursor_expired_total{stream} and
    ingestor_stream_parked{stream} exist at 0 for each, so increase() alerts see the first."""
    account = f"acct_1Zero{topic_prefix}"
    scenario = sim_scenario(history_events=20, history_bursts=0, accounts=(account,))
    keys = [f"{api}:{account}" for api in ("v1", "v2")]
    for key in keys:
        assert REGISTRY.get_sample_value("ingestor_cursor_expired_total", {"stream": key}) is None
    async with SimServer(scenario, seed=11) as sim:
        loaded = make_config(sim.url, bootstrap, topic_prefix, stripe__accounts="all")
        assert await serve(loaded, backfill=True, once=True) == 0
    # The account's streams are new to this process; the platform's may carry counts from
    # earlier tests in the same registry, so they only have to exist.
    for key in keys:
        labels = {"stream": key}
        assert REGISTRY.get_sample_value("ingestor_cursor_expired_total", labels) == 0.0, key
        assert REGISTRY.get_sample_value("ingestor_stream_parked", labels) == 0.0, key
    for key in ("v1:platform", "v2:platform"):
        labels = {"stream": key}
        assert REGISTRY.get_sample_value("ingestor_cursor_expired_total", labels) is not None
        assert REGISTRY.get_sample_value("ingestor_stream_parked", labels) is not None
