"""`ingestor run` as a real process: signals, exit codes, JSON logs, /metrics, restarts.

The simulator runs inside the test on 127.0.0.1; the process talks to it and the real broker.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingestor.sim.server import SimServer
from tests.integration.harness import (
    Proc,
    check_exactly_once,
    check_output,
    headers,
    http_get,
    published,
    sim_scenario,
    start,
    wait_published,
    wait_ready,
)


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str, **where: str) -> float:
    rows = metrics.get(name, [])
    return sum(v for labels, v in rows if all(labels.get(k) == x for k, x in where.items()))


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    scenario = sim_scenario(
        history_events=300,
        history_span_seconds=86400.0,
        burst_size=120,
        v2_share=0.25,
    )
    async with SimServer(scenario, seed=41) as server:
        yield server


@pytest.fixture
async def procs() -> AsyncIterator[list[Proc]]:
    """Processes a test started; any still running at the end are killed."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        for p in started:
            p.kill()
            await p.proc.wait()


METRIC_NAMES: Sequence[str] = (
    "ingestor_events_published_total",
    "ingestor_api_requests_total",
    "ingestor_event_lag_seconds",
    "ingestor_duplicates_skipped_total",
    "ingestor_dlq_events_total",
    "ingestor_hydration_requests_total",
    "ingestor_watermark_age_seconds",
    "ingestor_backfill_progress_ratio",
)


@pytest.mark.timeout(180)
async def test_sigterm_during_a_live_run_exits_0_within_10s_with_everything_committed(
    bootstrap: str, topic_prefix: str, tmp_path: Path, sim: SimServer, procs: list[Proc]
) -> None:
    """`run --backfill` then live events: /metrics names every metric with counts matching
    what was published; SIGTERM mid-run exits 0 within 10 s, every ground-truth event is
    committed exactly once, the output is JSON lines without the key; a restart with `--once`
    exits 0 and re-publishes nothing."""
    s = sim.sim
    p = await start(sim.url, bootstrap, topic_prefix, tmp_path, "--backfill", "--since", "2d")
    procs.append(p)
    await wait_ready(p)
    await wait_published(bootstrap, topic_prefix, {t["id"] for t in s.truth()})
    live = s.add_events(60) + s.add_events(15, api="v2")
    for acct in s.scenario.accounts:
        live += s.add_events(10, account=acct) + s.add_events(5, account=acct, api="v2")
    live += s.add_events(3, type="customer.updated", lag_seconds=2)  # visible 2 s later
    records = await wait_published(
        bootstrap, topic_prefix, {t["id"] for t in s.truth()} | set(live)
    )
    truth = s.truth()
    by_mode = Counter(headers(r)["ingest_mode"] for r in records)
    assert by_mode["tail"] >= len(live)
    assert by_mode["backfill"] > 0

    status, text = await http_get(p.http + "/metrics")
    assert status == 200
    for name in METRIC_NAMES:
        assert f"# TYPE {name}" in text or f"\n{name}" in text, name
    m = samples(text)
    assert total(m, "ingestor_events_published_total") == len(records) == len(truth)
    for api in ("v1", "v2"):
        n = sum(1 for t in truth if t["api"] == api)
        assert total(m, "ingestor_events_published_total", source=api) == n
    assert total(m, "ingestor_backfill_events_total") == by_mode["backfill"]
    assert total(m, "ingestor_event_lag_seconds_count") == len(truth)
    assert total(m, "ingestor_dlq_events_total") == 0
    assert total(m, "ingestor_duplicates_skipped_total") > 0  # overlap re-reads and sweeps
    v2 = sum(1 for t in truth if t["api"] == "v2")
    fetched = total(m, "ingestor_hydration_requests_total", result="ok")
    assert 0 < fetched <= v2
    assert total(m, "ingestor_backfill_progress_ratio") == 1.0
    streams = {labels["stream"] for labels, _ in m["ingestor_watermark_age_seconds"]}
    assert streams == {
        f"{api}:{acct or 'platform'}"
        for api in ("v1", "v2")
        for acct in (None, *s.scenario.accounts)
    }

    # Every 2xx the simulator answered was counted by the client (compared in a quiet moment
    # between polls, since both sides keep counting).
    async def requests_match() -> bool:
        _, text = await http_get(p.http + "/metrics")
        client = total(samples(text), "ingestor_api_requests_total", status="200")
        server = sum(per.get("200", 0) for per in s.counters().values())
        return client == server

    async with asyncio.timeout(20):
        while not await requests_match():  # noqa: ASYNC110 - polling another process
            await asyncio.sleep(0.05)

    late = s.add_events(30)  # may or may not be read before the signal; never half-written
    await asyncio.sleep(0.3)
    p.proc.send_signal(signal.SIGTERM)
    assert await p.wait(10) == 0
    docs = check_output(p)
    assert any(d.get("event") == "batch committed" for d in docs)

    again = await start(
        sim.url, bootstrap, topic_prefix, tmp_path, "--backfill", "--since", "2d", "--once"
    )
    procs.append(again)
    assert await again.wait(60) == 0
    check_output(again)
    truth = s.truth()
    assert {t["id"] for t in truth} >= set(late)
    records = await wait_published(bootstrap, topic_prefix, {t["id"] for t in truth})
    check_exactly_once(records, truth, topic_prefix)


@pytest.mark.timeout(180)
async def test_backfill_once_exits_0_and_a_restart_after_it_republishes_nothing(
    bootstrap: str, topic_prefix: str, tmp_path: Path, sim: SimServer, procs: list[Proc]
) -> None:
    """`run --backfill --once` exits 0 with every event committed exactly once; a live
    restart then stopped with SIGTERM exits 0 and publishes no record a second time."""
    s = sim.sim
    p = await start(
        sim.url, bootstrap, topic_prefix, tmp_path, "--backfill", "--since", "2d", "--once"
    )
    procs.append(p)
    assert await p.wait(60) == 0
    check_output(p)
    truth = s.truth()
    first = await wait_published(bootstrap, topic_prefix, {t["id"] for t in truth})
    check_exactly_once(first, truth, topic_prefix)

    again = await start(sim.url, bootstrap, topic_prefix, tmp_path, "--backfill")
    procs.append(again)
    await wait_ready(again)

    async def polls() -> float:
        _, text = await http_get(again.http + "/metrics")
        return total(samples(text), "ingestor_api_requests_total", endpoint="/v1/events")

    # Several full poll and sweep rounds over the already published window.
    start_polls = await polls()
    async with asyncio.timeout(30):
        while await polls() < start_polls + 30:  # noqa: ASYNC110 - polling another process
            await asyncio.sleep(0.2)
    await asyncio.sleep(1.5)
    again.proc.send_signal(signal.SIGTERM)
    assert await again.wait(10) == 0
    check_output(again)
    await asyncio.sleep(1)  # any (wrong) last transaction's markers would land by now
    second = await published(bootstrap, topic_prefix)
    assert len(second) == len(first)


async def test_sigterm_while_kafka_does_not_answer_exits_0_within_10s(
    topic_prefix: str, tmp_path: Path, sim: SimServer, procs: list[Proc]
) -> None:
    """A broker address that accepts connections and never answers holds the state restore
    for up to kafka.request_timeout (30 s); SIGTERM still ends the run with 0 within 10 s."""
    held: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        p = await start(sim.url, f"127.0.0.1:{port}", topic_prefix, tmp_path)
        procs.append(p)
        async with asyncio.timeout(20):
            while not held:  # noqa: ASYNC110 - waiting for another process to connect
                await asyncio.sleep(0.1)
        status, body = await http_get(p.http + "/readyz")
        assert status == 503
        assert "kafka" in body
        p.proc.send_signal(signal.SIGTERM)
        assert await p.wait(10) == 0
        for w in held:
            w.close()
    check_output(p)
