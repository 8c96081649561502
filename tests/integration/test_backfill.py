"""Backfill end to end: simulator ground truth vs. what a read_committed consumer sees."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import structlog

from ingestor import metrics, pipeline, tail
from ingestor.pipeline import EXIT_DATA_LOST, serve
from ingestor.plan import RETENTION_MARGIN_MS, RETENTION_MS
from ingestor.sim.scenario import Scenario
from ingestor.sim.server import SimServer
from ingestor.sim.simulator import Simulator
from ingestor.sink import Sink
from ingestor.state import decode_head, is_head_key
from tests.integration.harness import (
    TEST_KEY,
    check_exactly_once,
    headers,
    make_config,
    metric,
    sim_scenario,
    wait_published,
)
from tests.integration.kafka_util import ROOT, read_all

DAY = 86400.0
LIST_ENDPOINTS = ("GET /v1/events", "GET /v2/core/events")


def bursty(**changes: Any) -> Scenario:
    """A multi-day history with same-second bursts, v1 + v2, platform + connected accounts."""
    base = dict(
        history_events=3000,
        history_span_seconds=4 * DAY,
        history_bursts=3,
        burst_size=300,
        v2_share=0.2,
        platform_share=0.5,
    )
    return sim_scenario(**{**base, **changes})


def list_requests(sim: Simulator) -> int:
    counters = sim.counters()
    return sum(sum(counters.get(e, {}).values()) for e in LIST_ENDPOINTS)


async def backfill_heads(bootstrap: str, prefix: str) -> dict[str, Any]:
    """The committed head record of every stream, by stream key."""
    records = await read_all(bootstrap, re.escape(prefix) + r"\._ingestor_state")
    heads: dict[str, Any] = {}
    for r in records:
        if r.value is not None and is_head_key(r.key):
            heads[r.key.decode()] = decode_head(r.key, r.value)
    return heads


async def settled_heads(bootstrap: str, prefix: str) -> dict[str, Any]:
    """Head records once two reads agree: a commit returns before its transaction markers
    land, so a read right after a run can still miss that run's last state."""
    heads = await backfill_heads(bootstrap, prefix)
    async with asyncio.timeout(30):
        while True:
            await asyncio.sleep(0.5)
            again = await backfill_heads(bootstrap, prefix)
            if again == heads:
                return heads
            heads = again


def assert_per_object_order(records: list[Any], created: dict[str, int]) -> None:
    """In every Kafka partition, each object's events appear in non-decreasing created order."""
    last: dict[tuple[str, int, bytes], int] = {}
    for r in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        k = (r.topic, r.partition, r.key)
        c = created[headers(r)["event_id"]]
        assert c >= last.get(k, c), f"{r.key!r} out of order in {r.topic}/{r.partition}"
        last[k] = c


@contextmanager
def sim_clock(sim: Simulator) -> Iterator[None]:
    """The ingestor's clock follows the simulator's, so `advance_clock` ages its cursors too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "now_ms", sim.now_ms)
        mp.setattr(pipeline, "Tail", functools.partial(tail.Tail, clock_ms=sim.now_ms))
        yield


async def test_backfill_once_publishes_a_bursty_multi_day_history_exactly_once_in_object_order(
    bootstrap: str, topic_prefix: str
) -> None:
    """v1 + v2, platform + connected accounts, same-second bursts of hundreds across many
    (split) slices: every event exactly once, and each object's events in created order."""
    async with SimServer(bursty(), seed=21) as server:
        loaded = make_config(
            server.url,
            bootstrap,
            topic_prefix,
            stripe__accounts="all",
            backfill__slice_seconds=3 * 3600,
        )
        assert await serve(loaded, backfill=True, once=True) == 0
        truth = server.sim.truth()
    assert {t["api"] for t in truth} == {"v1", "v2"}
    assert len({t.get("account") for t in truth}) == 3
    records = await wait_published(bootstrap, topic_prefix, {t["id"] for t in truth})
    check_exactly_once(records, truth, topic_prefix)
    assert_per_object_order(records, {t["id"]: _truth_ms(t) for t in truth})


def _env(url: str, bootstrap: str, prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        "STRIPE_API_KEY": TEST_KEY,
        "STRIPE_API_BASE": url,
        "STRIPE_RATE_LIMIT": "80",
        "INGESTOR_STRIPE__ENDPOINT_RATE_LIMIT": "80",
        "INGESTOR_STRIPE__V2": "false",
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "INGESTOR_TOPIC_PREFIX": prefix,
        "INGESTOR_HTTP_PORT": "0",
        "INGESTOR_LOG__LEVEL": "warning",
        "INGESTOR_KAFKA__TOPIC_PARTITIONS": "3",
        "INGESTOR_BACKFILL__SLICE_SECONDS": "7200",
    }


async def _run(url: str, bootstrap: str, prefix: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ingestor",
        "run",
        "--backfill",
        "--once",
        env=_env(url, bootstrap, prefix),
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


@pytest.mark.slow
async def test_a_backfill_killed_with_sigkill_resumes_without_loss_or_duplicates_refetching_little(
    bootstrap: str, topic_prefix: str
) -> None:
    """`kill -9` of `ingestor run --backfill --once` once its committed cursor passed 40% of
    the range; the rerun finishes from that cursor: every event exactly once, and the list
    requests of both runs exceed a clean single run's by less than 20%."""
    scenario = bursty(
        history_events=30_000, history_span_seconds=8 * DAY, v2_share=0.0, accounts=()
    )
    async with SimServer(scenario, seed=22) as server:
        sim = server.sim
        clean_prefix = topic_prefix + "clean"
        proc = await _run(server.url, bootstrap, clean_prefix)
        assert await asyncio.wait_for(proc.wait(), 100) == 0
        clean = list_requests(sim)

        sim.reset_counters()
        proc = await _run(server.url, bootstrap, topic_prefix)
        ratio = 0.0
        async with asyncio.timeout(60):
            while ratio < 0.4:
                await asyncio.sleep(0.3)
                assert proc.returncode is None, "the backfill finished before it was killed"
                heads = await backfill_heads(bootstrap, topic_prefix)
                progress = [h.backfill.ratio() for h in heads.values() if h.backfill]
                ratio = progress[0] if progress else 0.0
        proc.send_signal(signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
        first = list_requests(sim)

        sim.reset_counters()
        proc = await _run(server.url, bootstrap, topic_prefix)
        assert await asyncio.wait_for(proc.wait(), 100) == 0
        second = list_requests(sim)
        truth = sim.truth()
    records = await wait_published(bootstrap, topic_prefix, {t["id"] for t in truth})
    check_exactly_once(records, truth, topic_prefix)
    assert first + second < 1.2 * clean, (first, second, clean)


async def test_since_older_than_retention_is_clamped_with_a_warning(
    bootstrap: str, topic_prefix: str
) -> None:
    """`--since 45d` starts at the 30-day edge (plus the safety margin) and says so."""
    async with SimServer(bursty(history_events=300, accounts=()), seed=23) as server:
        loaded = make_config(server.url, bootstrap, topic_prefix, stripe__v2=False)
        before = server.sim.now_ms()
        with structlog.testing.capture_logs() as logs:
            assert await serve(loaded, backfill=True, since="45d", once=True) == 0
        after = server.sim.now_ms()
        truth = [t for t in server.sim.truth() if t["api"] == "v1"]
    clamped = [e for e in logs if e["event"].startswith("backfill start clamped")]
    assert len(clamped) == 1
    assert clamped[0]["log_level"] == "warning"
    assert before - 45 * DAY * 1000 - 1000 <= clamped[0]["requested"] <= after - 45 * DAY * 1000
    edge = clamped[0]["clamped_to"]
    assert before - RETENTION_MS + RETENTION_MARGIN_MS <= edge
    assert edge <= after - RETENTION_MS + RETENTION_MARGIN_MS
    records = await wait_published(bootstrap, topic_prefix, {t["id"] for t in truth})
    check_exactly_once(records, truth, topic_prefix)


def expired(stream: str) -> float:
    value = metrics.REGISTRY.get_sample_value("ingestor_cursor_expired_total", {"stream": stream})
    return value or 0.0


async def test_a_stored_backfill_cursor_past_retention_is_reported_and_once_exits_3(
    bootstrap: str, topic_prefix: str
) -> None:
    """A backfill cancelled hard midway, then the clock moves ~30 days: the rerun logs an error
    naming the exact lost window [stored cursor, retention edge), counts it in
    `ingestor_cursor_expired_total`, publishes everything after the edge exactly once, and
    `--once` exits 3."""
    scenario = bursty(history_events=6000, accounts=(), v2_share=0.0, history_bursts=0)
    async with SimServer(scenario, seed=24) as server:
        sim = server.sim
        loaded = make_config(
            server.url,
            bootstrap,
            topic_prefix,
            stripe__v2=False,
            stripe__rate_limit=15,
            backfill__slice_seconds=3600,
            backfill__concurrency=2,
        )
        with sim_clock(sim):
            run = asyncio.create_task(serve(loaded, backfill=True, since="4d", once=True))
            cursor = None
            async with asyncio.timeout(60):
                while cursor is None:
                    await asyncio.sleep(0.3)
                    head = (await backfill_heads(bootstrap, topic_prefix)).get("v1:platform")
                    if head and head.backfill and 0.1 < head.backfill.ratio() < 0.6:
                        cursor = head.backfill.cursor_ms
            run.cancel()  # hard: no drain, nothing more committed
            with pytest.raises(asyncio.CancelledError):
                await run
            # A commit the cancelled run had already sent may still complete at the broker:
            # fence its producer first, as the rerun's start does, so the state read next is
            # the one the rerun restores.
            async with Sink(loaded.config.kafka):
                pass
            stored = (await settled_heads(bootstrap, topic_prefix))["v1:platform"].backfill
            assert stored is not None
            assert not stored.complete

            # The stored cursor (>1.6 days old) ages out; the tail start (10 min old) does not.
            sim.advance_clock(30 * DAY - 3600)
            before_metric = expired("v1:platform")
            before = sim.now_ms()
            with structlog.testing.capture_logs() as logs:
                code = await serve(loaded, backfill=True, once=True)
            after = sim.now_ms()
            truth = sim.truth()
    assert code == EXIT_DATA_LOST
    errors = [e for e in logs if e["event"].startswith("cursor aged out")]
    assert len(errors) == 1, errors
    err = errors[0]
    assert err["log_level"] == "error"
    assert err["what"] == "backfill"
    assert err["lost_from"] == stored.cursor_ms
    assert before - RETENTION_MS + RETENTION_MARGIN_MS <= err["lost_to"]
    assert err["lost_to"] <= after - RETENTION_MS + RETENTION_MARGIN_MS
    assert expired("v1:platform") == before_metric + 1
    # Nothing after the edge is skipped, nothing is doubled.
    after_edge = [t for t in truth if _truth_ms(t) >= err["lost_to"]]
    assert after_edge
    records = await wait_published(bootstrap, topic_prefix, {t["id"] for t in after_edge})
    ids = [headers(r)["event_id"] for r in records]
    assert len(ids) == len(set(ids))


def _truth_ms(t: dict[str, Any]) -> int:
    """`created` as the API shows it: whole seconds for v1, milliseconds for v2."""
    return int(t["created"]) * 1000 if t["api"] == "v1" else int(t["created_ms"])


async def test_a_stored_tail_cursor_past_retention_is_reported_once_and_once_exits_3(
    bootstrap: str, topic_prefix: str
) -> None:
    """A stream last read through 31 days ago (the simulator's clock moved on) is reported
    once, from the time it was read through, counted, and the rerun still publishes the new
    events."""
    scenario = bursty(history_events=200, accounts=(), v2_share=0.0, history_bursts=0)
    async with SimServer(scenario, seed=25) as server:
        sim = server.sim
        loaded = make_config(server.url, bootstrap, topic_prefix, stripe__v2=False)
        with sim_clock(sim):
            assert await serve(loaded, once=True) == 0
            head = (await settled_heads(bootstrap, topic_prefix))["v1:platform"]
            sim.advance_clock(31 * DAY)
            fresh = sim.add_events(150, type="charge.succeeded")
            before_metric = expired("v1:platform")
            with structlog.testing.capture_logs() as logs:
                code = await serve(loaded, once=True)
    assert code == EXIT_DATA_LOST
    errors = [e for e in logs if e["event"].startswith("cursor aged out")]
    assert len(errors) == 1, errors
    assert errors[0]["what"] == "tail"
    assert head.read_through_ms is not None
    assert errors[0]["lost_from"] == head.read_through_ms
    assert expired("v1:platform") == before_metric + 1
    records = await wait_published(bootstrap, topic_prefix, set(fresh))
    ids = [headers(r)["event_id"] for r in records]
    assert len(ids) == len(set(ids))


async def test_a_quiet_stream_read_regularly_is_never_reported_lost(
    bootstrap: str, topic_prefix: str
) -> None:
    """Finding 4: a stream with no new events for 35 days, read every couple of weeks, lost
    nothing: the alarms follow the time it was read through, not its newest event, so
    `--once` exits 0, no window is reported and the gap alarm stays clear."""
    scenario = bursty(history_events=100, accounts=(), v2_share=0.0, history_bursts=0)
    async with SimServer(scenario, seed=27) as server:
        sim = server.sim
        loaded = make_config(server.url, bootstrap, topic_prefix, stripe__v2=False)
        before = expired("v1:platform")
        with sim_clock(sim), structlog.testing.capture_logs() as logs:
            assert await serve(loaded, once=True) == 0
            for _ in range(5):
                sim.advance_clock(6 * DAY)
                assert await serve(loaded, once=True) == 0
            head = (await settled_heads(bootstrap, topic_prefix))["v1:platform"]
    assert not [e for e in logs if e["event"].startswith(("cursor aged out", "cursor gap"))]
    assert expired("v1:platform") == before
    assert metric("ingestor_cursor_gap_alarm", stream="v1:platform") == 0
    assert head.read_through_ms is not None
    assert head.read_through_ms - head.watermark_ms > 29 * DAY * 1000


async def _handover(bootstrap: str, prefix: str, *, tail_during_backfill: bool) -> None:
    scenario = bursty(history_events=3000, accounts=(), v2_share=0.1, live_rate=40.0)
    async with SimServer(scenario, seed=26) as server:
        sim = server.sim
        loaded = make_config(
            server.url,
            bootstrap,
            prefix,
            stripe__rate_limit=40,
            backfill__slice_seconds=6 * 3600,
            backfill__tail_during_backfill=tail_during_backfill,
            tail__sweep_window_seconds=30,
            tail__sweep_interval_seconds=2,
        )
        stop = asyncio.Event()
        run = asyncio.create_task(serve(loaded, backfill=True, stop=stop))
        try:
            async with asyncio.timeout(60):
                while True:  # live events keep arriving while the backfill runs
                    await asyncio.sleep(0.5)
                    heads = await backfill_heads(bootstrap, prefix)
                    bfs = [h.backfill for h in heads.values() if h.backfill]
                    if len(bfs) == 2 and all(b.complete for b in bfs):
                        break
            await asyncio.sleep(2)  # the tail goes on after the handover
            sim.set_faults(live_rate=0.0)
            truth = sim.truth()
            records = await wait_published(bootstrap, prefix, {t["id"] for t in truth})
        finally:
            stop.set()
        assert await asyncio.wait_for(run, 20) == 0
        heads = await backfill_heads(bootstrap, prefix)
    check_exactly_once(records, truth, prefix)
    by_id = {headers(r)["event_id"]: r for r in records}
    for t in truth:
        h = heads[f"{t['api']}:platform"]
        mode = headers(by_id[t["id"]])["ingest_mode"]
        # Backfill owns [since, tail_start), the tail [tail_start, ...): no gap, no overlap.
        assert mode == ("backfill" if _truth_ms(t) < h.tail_start_ms else "tail"), t
    modes = {headers(r)["ingest_mode"] for r in records}
    assert modes == {"backfill", "tail"}


async def test_backfill_hands_over_to_the_live_tail_at_tail_start_with_no_gap_or_duplicate(
    bootstrap: str, topic_prefix: str
) -> None:
    """Live events arrive during the backfill; the backfill publishes everything created
    before `tail_start_ms`, the tail everything from it, each event exactly once."""
    await _handover(bootstrap, topic_prefix, tail_during_backfill=False)


async def test_tail_during_backfill_runs_both_at_once_with_the_same_handover(
    bootstrap: str, topic_prefix: str
) -> None:
    """`tail_during_backfill = true` tails from `tail_start_ms` while the backfill still reads
    older history. The split by created time is the same, so nothing is lost or doubled; what
    it gives up is cross-mode order: an object's new (tail) events may reach Kafka before its
    older backfilled ones, so per-object order holds within each mode only."""
    await _handover(bootstrap, topic_prefix, tail_during_backfill=True)
