"""The pipeline under API faults, 429s, poison events and a broker that goes away.

Every test checks against the simulator's ground truth with a read_committed consumer.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from ingestor.health import Readiness
from ingestor.metrics import REGISTRY
from ingestor.pipeline import serve
from ingestor.route import Router
from ingestor.sim.scenario import Faults
from ingestor.sim.server import SimServer
from tests.integration.harness import (
    TEST_KEY,
    check_exactly_once,
    headers,
    make_config,
    metric,
    published,
    sim_scenario,
    until,
    wait_published,
)
from tests.integration.kafka_util import Broker, second_broker

# ~5% each of every kind of failure Stripe or the network produces (25% of requests in all).
FAULT_MIX = Faults(
    error_500=0.05, error_503_html=0.05, conflict_409=0.05, truncate=0.05, reset=0.05
)
# The simulator's limit is below the ingestor's budget, so the budget must learn it from 429s.
SIM_RATE_LIMIT = 30.0
INGESTOR_RATE_LIMIT = 120


def assert_key_absent(logs: list[Any], caplog: pytest.LogCaptureFixture, *more: bytes) -> None:
    """The raw API key is in no captured log event, stdlib log line, metric or record."""
    key = TEST_KEY.encode()
    assert key not in repr(logs).encode()
    assert key not in caplog.text.encode()
    assert key not in generate_latest(REGISTRY)
    for blob in more:
        assert key not in blob


def record_bytes(records: list[Any]) -> bytes:
    return b"\n".join(
        (r.value or b"") + b"".join(k.encode() + v for k, v in r.headers) for r in records
    )


@pytest.mark.slow
async def test_backfill_once_under_a_fault_mix_and_429s_publishes_every_event_exactly_once(
    bootstrap: str, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """500 (Should-Retry), 503 HTML, 409, truncated bodies and resets at ~5% each, plus 429s
    from a simulator limit below the ingestor's budget, during `--backfill --once` over v1 and
    v2 with connected accounts: every event exactly once, retries and 429s counted, the key
    never shown."""
    caplog.set_level(logging.INFO)
    scenario = sim_scenario(
        history_events=1000,
        history_span_seconds=2 * 86400.0,
        burst_size=150,
        v2_share=0.2,
        rate_limit=SIM_RATE_LIMIT,
        faults=FAULT_MIX,
    )
    rate_limited = metric("ingestor_rate_limited_total")
    # Resets are not in the list: aiohttp itself retries a GET once when a kept-alive
    # connection is reset, so the client may never see one (the simulator counts them).
    retries = {
        r: metric("ingestor_api_retries_total", reason=r)
        for r in ("server_error", "conflict", "malformed", "rate_limited")
    }
    async with SimServer(scenario, seed=11) as sim:
        loaded = make_config(
            sim.url,
            bootstrap,
            topic_prefix,
            stripe__accounts="all",
            stripe__rate_limit=INGESTOR_RATE_LIMIT,
            stripe__backoff_base=0.05,
            stripe__backoff_max=1.0,
            hydrate__max_attempts=12,
            backfill__since="3d",
        )
        with capture_logs() as logs:
            # Bounded: a retried backfill once hung forever on a stale in-flight slice.
            code = await asyncio.wait_for(serve(loaded, backfill=True, once=True), 90)
        assert code == 0
        truth = sim.sim.truth()
        counters = sim.sim.counters()
    records = await wait_published(bootstrap, topic_prefix, {t["id"] for t in truth})
    by_id = check_exactly_once(records, truth, topic_prefix)
    assert not [r for r in records if r.topic.endswith(".dlq")]
    assert len(by_id) == len(truth) >= 1100
    assert {t["api"] for t in truth} == {"v1", "v2"}
    assert len({t["account"] for t in truth}) == 3  # the platform and two connected accounts
    # Every fault kind really happened, and the client retried through each of them.
    seen = Counter[str]()
    for per_endpoint in counters.values():
        seen.update(per_endpoint)
    for status in ("500", "503", "409", "truncated", "reset", "429"):
        assert seen[status] > 0, (status, counters)
    assert metric("ingestor_rate_limited_total") - rate_limited >= seen["429"] > 0
    for reason, before in retries.items():
        assert metric("ingestor_api_retries_total", reason=reason) > before, reason
    assert_key_absent(logs, caplog, record_bytes(records))


@pytest.mark.slow
async def test_live_tail_under_a_fault_mix_and_429s_publishes_every_event_exactly_once(
    bootstrap: str, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Events added while the tail runs (v1, v2, connected accounts, late ones, a same-second
    burst) with faults and 429s on: each is published exactly once, in tail mode."""
    caplog.set_level(logging.INFO)
    scenario = sim_scenario(history_events=20, rate_limit=SIM_RATE_LIMIT)
    rate_limited = metric("ingestor_rate_limited_total")
    async with SimServer(scenario, seed=12) as sim:
        loaded = make_config(
            sim.url,
            bootstrap,
            topic_prefix,
            stripe__accounts="all",
            stripe__rate_limit=INGESTOR_RATE_LIMIT,
            stripe__backoff_base=0.05,
            stripe__backoff_max=1.0,
            hydrate__max_attempts=12,
            tail__overlap_seconds=2,
            tail__sweep_interval_seconds=1,
            tail__sweep_window_seconds=60,
        )
        stop = asyncio.Event()
        s = sim.sim
        with capture_logs() as logs:
            run = asyncio.create_task(serve(loaded, stop=stop))
            try:
                await asyncio.sleep(1.0)
                s.set_faults(FAULT_MIX)
                ids: list[str] = []
                for round_ in range(6):
                    ids += s.add_events(40)
                    ids += s.add_events(10, api="v2")
                    for acct in scenario.accounts:
                        ids += s.add_events(5, account=acct)
                        ids += s.add_events(3, account=acct, api="v2")
                    ids += s.add_events(4, type="customer.updated", lag_seconds=3)
                    if round_ == 2:
                        ids += s.add_events(200, type="charge.updated")  # one second
                    await asyncio.sleep(0.7)
                await wait_published(bootstrap, topic_prefix, set(ids), within=90)
            finally:
                stop.set()
            assert await asyncio.wait_for(run, 15) == 0
        truth = [t for t in s.truth() if t["id"] in set(ids)]
        counters = s.counters()
    assert len(truth) == len(ids)
    records = [
        r for r in await published(bootstrap, topic_prefix) if headers(r)["event_id"] in set(ids)
    ]
    check_exactly_once(records, truth, topic_prefix)
    assert all(headers(r)["ingest_mode"] == "tail" for r in records)
    assert not [r for r in records if r.topic.endswith(".dlq")]
    seen = Counter[str]()
    for per_endpoint in counters.values():
        seen.update(per_endpoint)
    for status in ("500", "503", "409", "truncated", "reset", "429"):
        assert seen[status] > 0, (status, counters)
    assert metric("ingestor_rate_limited_total") > rate_limited
    assert_key_absent(logs, caplog, record_bytes(records))


@pytest.fixture
async def sim_quiet() -> AsyncIterator[SimServer]:
    """A simulator with no history (tests add exactly the events they need), platform only."""
    scenario = sim_scenario(history_events=0, history_bursts=0, accounts=())
    async with SimServer(scenario, seed=21) as sim:
        yield sim


async def test_thin_event_whose_object_was_deleted_is_published_with_status_not_found(
    bootstrap: str, topic_prefix: str, sim_quiet: SimServer
) -> None:
    """A v2 event whose related object is gone (404) is published, not retried forever:
    `hydration.status == "not_found"` and `related_object: null`."""
    s = sim_quiet.sim
    [customer] = s.add_events(1, type="customer.created")
    object_id = s.truth()[0]["object_id"]
    [deleted] = s.add_events(1, type="v1.customer.deleted", api="v2", object_id=object_id)
    ok = s.add_events(3, type="v1.charge.succeeded", api="v2")
    loaded = make_config(sim_quiet.url, bootstrap, topic_prefix, backfill__since="1h")
    assert await serve(loaded, backfill=True, once=True) == 0
    ids = {customer, deleted, *ok}
    records = await wait_published(bootstrap, topic_prefix, ids)
    by_id = check_exactly_once(records, s.truth(), topic_prefix)
    envelope = orjson.loads(by_id[deleted].value)
    assert envelope["hydration"]["status"] == "not_found"
    assert envelope["related_object"] is None
    assert envelope["event"]["related_object"]["id"] == object_id
    for event_id in ok:
        env = orjson.loads(by_id[event_id].value)
        assert env["hydration"]["status"] == "ok"
        assert env["related_object"]["id"] == env["event"]["related_object"]["id"]


async def test_hydration_that_keeps_failing_goes_to_the_dlq_without_blocking_its_partition(
    bootstrap: str, topic_prefix: str, sim_quiet: SimServer
) -> None:
    """Every fetch of invoices fails (500): the thin event goes to `<prefix>.dlq` with
    `dlq_reason: hydration_failed`, counted in ingestor_dlq_events_total; later events of the
    same partition (v2, platform) are still published."""
    s = sim_quiet.sim
    s.set_faults(error_500=1.0, fault_paths=["/v1/invoices/"])
    before = metric("ingestor_dlq_events_total", reason="hydration_failed")
    loaded = make_config(
        sim_quiet.url,
        bootstrap,
        topic_prefix,
        hydrate__max_attempts=3,
        tail__overlap_seconds=1,
        tail__sweep_interval_seconds=1,
        tail__sweep_window_seconds=30,
    )
    stop = asyncio.Event()
    run = asyncio.create_task(serve(loaded, stop=stop))
    try:
        await asyncio.sleep(1.0)
        [poison] = s.add_events(1, type="v1.invoice.paid", api="v2")
        await asyncio.sleep(1.5)
        later = s.add_events(5, type="v1.charge.succeeded", api="v2")
        later += s.add_events(5, type="charge.succeeded")
        records = await wait_published(bootstrap, topic_prefix, {poison, *later}, within=30)
    finally:
        stop.set()
    assert await asyncio.wait_for(run, 10) == 0
    dlq = [r for r in records if r.topic == f"{topic_prefix}.dlq"]
    assert [headers(r)["event_id"] for r in dlq] == [poison]
    h = headers(dlq[0])
    assert h["dlq_reason"] == "hydration_failed"
    assert "500" in h["dlq_detail"], h
    assert h["event_type"] == "v1.invoice.paid"
    assert h["source"] == "v2"
    assert orjson.loads(dlq[0].value)["id"] == poison  # the thin event itself
    assert metric("ingestor_dlq_events_total", reason="hydration_failed") == before + 1
    truth = [t for t in s.truth() if t["id"] in set(later)]
    check_exactly_once([r for r in records if r not in dlq], truth, topic_prefix)
    assert s.counters()["GET /v1/invoices/{id}"]["500"] == 3  # max_attempts, then given up


async def test_an_event_too_large_for_kafka_goes_to_the_dlq_as_too_large_never_dropped(
    bootstrap: str, topic_prefix: str, sim_quiet: SimServer
) -> None:
    """With kafka.max_message_bytes = 2048, invoice and charge snapshots (~3-4 KB) go to the
    DLQ with `dlq_reason: too_large` (counted), customers (~1.2 KB) to their topics; every
    event lands exactly once, in one place or the other."""
    s = sim_quiet.sim
    big = s.add_events(2, type="invoice.paid") + s.add_events(2, type="charge.succeeded")
    small = s.add_events(3, type="customer.created")
    before = metric("ingestor_dlq_events_total", reason="too_large")
    loaded = make_config(
        sim_quiet.url,
        bootstrap,
        topic_prefix,
        backfill__since="1h",
        kafka__max_message_bytes=2048,
        stripe__v2=False,
    )
    assert await serve(loaded, backfill=True, once=True) == 0
    records = await wait_published(bootstrap, topic_prefix, {*big, *small})
    assert Counter(headers(r)["event_id"] for r in records) == Counter({*big, *small})
    router = Router(topic_prefix)
    for r in records:
        h = headers(r)
        if h["event_id"] in big:
            assert r.topic == f"{topic_prefix}.dlq"
            assert h["dlq_reason"] == "too_large"
            summary = orjson.loads(r.value)
            assert summary["event_id"] == h["event_id"]
            assert summary["size"] > 2048
        else:
            assert r.topic == router.topic_for(h["event_type"])
            assert orjson.loads(r.value)["id"] == h["event_id"]
    assert metric("ingestor_dlq_events_total", reason="too_large") == before + len(big)


async def test_new_event_types_are_published_to_their_own_sanitized_topics(
    bootstrap: str, topic_prefix: str, sim_quiet: SimServer
) -> None:
    """Types the ingestor has never heard of (one legal, one with brackets) each get their own
    topic: `<prefix>.<type>` or its sanitized, hashed form of legal Kafka characters."""
    s = sim_quiet.sim
    legal = "charge.brand_new_thing.happened"
    bracketed = "v2.core.account[brand_new_config].happened"
    ids = s.add_events(3, type=legal) + s.add_events(2, type=bracketed, api="v2")
    loaded = make_config(sim_quiet.url, bootstrap, topic_prefix, backfill__since="1h")
    assert await serve(loaded, backfill=True, once=True) == 0
    records = await wait_published(bootstrap, topic_prefix, set(ids))
    check_exactly_once(records, s.truth(), topic_prefix)
    topics = {headers(r)["event_type"]: r.topic for r in records}
    assert topics[legal] == f"{topic_prefix}.{legal}"
    sanitized = topics[bracketed]
    assert re.fullmatch(r"[a-zA-Z0-9._-]{1,249}", sanitized)
    assert sanitized.startswith(f"{topic_prefix}.v2.core.account_brand_new_config_.happened-")
    assert sanitized != topics[legal]


@pytest.fixture
async def private_broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with second_broker(tmp_path / "kafka") as broker:
        yield broker


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_kafka_going_away_mid_run_marks_not_ready_then_recovers_exactly_once(
    private_broker: Broker, topic_prefix: str
) -> None:
    """The live pipeline against a private broker: stopping the broker makes readiness name
    Kafka; events added while it is down are published after it comes back, and every event
    exactly once."""
    boot = private_broker.bootstrap
    scenario = sim_scenario(history_events=0, history_bursts=0)
    async with SimServer(scenario, seed=31) as sim:
        s = sim.sim
        loaded = make_config(
            sim.url,
            boot,
            topic_prefix,
            stripe__accounts="all",
            kafka__request_timeout=5,
            tail__overlap_seconds=1,
            tail__sweep_interval_seconds=1,
            tail__sweep_window_seconds=120,
        )
        stop = asyncio.Event()
        readiness = Readiness()
        run = asyncio.create_task(serve(loaded, stop=stop, readiness=readiness))
        try:
            await asyncio.sleep(1.0)
            ids = s.add_events(30) + s.add_events(10, api="v2")
            ids += s.add_events(5, account=scenario.accounts[0])
            await wait_published(boot, topic_prefix, set(ids))
            assert readiness.ready()

            await private_broker.down()
            down_ids = s.add_events(40) + s.add_events(10, api="v2")
            down_ids += s.add_events(5, account=scenario.accounts[1], api="v2")
            await until(lambda: not readiness.ready(), within=30)
            assert any(r.startswith("kafka") for r in readiness.reasons()), readiness.reasons()
            down_ids += s.add_events(20, type="customer.updated")

            await private_broker.up()
            after = s.add_events(20) + s.add_events(5, api="v2")
            every = set(ids + down_ids + after)
            await wait_published(boot, topic_prefix, every, within=90)
            await until(readiness.ready, within=30)
        finally:
            stop.set()
        assert await asyncio.wait_for(run, 15) == 0
        truth = s.truth()
    assert {t["id"] for t in truth} == every
    records = await published(boot, topic_prefix)
    check_exactly_once(records, truth, topic_prefix)
