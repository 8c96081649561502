"""`make bench`'s other issue-10 targets: CPU-bound vs a minimal pipeline, hydration, tail, RSS.

- cpu: the ingestor's backfill with no latency and no limit against `bench.minimal` (one
  sequential cursor, plain produce, no dedupe/state/transactions) on the same simulator and data,
  both as subprocesses timed from their first request to their exit, in CPU_PAIRS interleaved
  pairs (the minimal pipeline alone moves by a third between runs): the median pair's ratio
  >= 1.0. Both write into topics that exist, as the minimal pipeline's is made before its clock
  starts: the ingestor first backfills once on the prefix, creating its 26 topics (the broker
  brings their partitions online one by one, waits that are not CPU; quoted as well), then,
  its state topic deleted, again.
- hydration: a v2-only backfill of thin events whose related objects have 5 events each on
  average; every API request (list pages and retrieves) per thin event: <= 0.35.
- tail: `ingestor run` while the simulator creates 500 events/s; a read_committed consumer in
  the bench process notes when each event id becomes readable, against the time the simulator
  made it visible: p99 <= poll interval + 300 ms.
- rss: peak RSS (VmHWM) of a 100k and a 1M backfill: <= 250 MB and <= 400 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import re
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import NotLeaderForPartitionError

from bench.run import (
    RESULTS,
    ROOT,
    IngestorRun,
    Sim,
    _free_port,
    backfills_on_prefix,
    drop_bench_topics,
    ingestor_env,
    run_ingestor,
    spawn_ingestor,
    start_sim,
    stop_sim,
    time_process,
    wait_ready,
)
from bench.run import tail_scenario as run_tail_scenario
from ingestor.sim.scenario import Scenario, load_scenario

CPU_EVENTS = 100_000
# No limit on either side: what is measured is CPU, not the budget.
UNLIMITED = {
    "STRIPE_RATE_LIMIT": "100000",
    "INGESTOR_STRIPE__ENDPOINT_RATE_LIMIT": "100000",
    "INGESTOR_STRIPE__CONCURRENCY_LIMIT": "1000",
    "INGESTOR_STRIPE__ENDPOINT_CONCURRENCY_LIMIT": "1000",
    "INGESTOR_STRIPE__V2": "false",
}
HYDRATION_EVENTS = 5_000
EVENTS_PER_OBJECT = 5.0
TAIL_RATE = 500.0
TAIL_SECONDS = 30.0
TAIL_WARMUP_SECONDS = 5.0
POLL_INTERVAL = 1.0  # TailConfig's default, which the run uses
RSS_SMALL_EVENTS = 100_000
CPU_PAIRS = 3


def cpu_scenario(events: int) -> Scenario:
    """v1 events over 29 days on the platform stream, no latency, no limit."""
    return dataclasses.replace(
        load_scenario("bench"),
        history_events=events,
        history_span_seconds=29 * 86400.0,
        history_bursts=2,
        burst_size=500,
        live_rate=0.0,
        v2_share=0.0,
        rate_limit=0.0,
        endpoint_rate_limit=0.0,
        latency_min_ms=0.0,
        latency_max_ms=0.0,
    )


@dataclass(frozen=True)
class CpuRun:
    """A pair (minimal, then the ingestor into its existing topics), with the ingestor's first
    run (creating them); the median pair carries every pair's ratios."""

    events: int
    ingestor: IngestorRun
    first: IngestorRun
    minimal_seconds: float
    minimal_events: int
    minimal_cpu_seconds: float
    ratios: tuple[float, ...] = ()
    first_ratios: tuple[float, ...] = ()

    @property
    def minimal_per_s(self) -> float:
        return self.minimal_events / self.minimal_seconds

    @property
    def ratio(self) -> float:
        return self.ingestor.events_per_s / self.minimal_per_s

    @property
    def first_ratio(self) -> float:
        return self.first.events_per_s / self.minimal_per_s


async def topic_records(bootstrap: str, topic: str) -> int:
    """Records in `topic` (sum of its partitions' end offsets)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    tps = [TopicPartition(topic, p["partition"]) for d in described for p in d["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        end = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return sum(end.values())


async def create_topic(bootstrap: str, topic: str) -> None:
    """The minimal pipeline's topic, with the ingestor's benchmark partitions (the broker does
    not create topics on first use); made before its clock starts."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)])
    finally:
        await admin.close()


async def measure_cpu(
    session: aiohttp.ClientSession, bootstrap: str, events: int, pairs: int = CPU_PAIRS
) -> CpuRun:
    """`pairs` times the minimal pipeline, then the ingestor (creating its topics, then into
    them), against one simulator (same data, rendered before the first); the pair with the
    median ratio, with every ratio."""
    print(
        f"bench: CPU-bound, {events:,} events: minimal pipeline, then the ingestor creating "
        f"its topics and into them, {pairs} times ...",
        flush=True,
    )
    sim = await start_sim(cpu_scenario(events), 17, session)
    runs: list[CpuRun] = []
    try:
        truth: int = (await sim.get("/_sim/config"))["events"]
        for _ in range(pairs):
            runs.append(await _cpu_pair(sim, bootstrap, truth))
    finally:
        stop_sim(sim)
    median = sorted(runs, key=lambda r: r.ratio)[(len(runs) - 1) // 2]
    return dataclasses.replace(
        median,
        ratios=tuple(r.ratio for r in runs),
        first_ratios=tuple(r.first_ratio for r in runs),
    )


async def _cpu_pair(sim: Sim, bootstrap: str, truth: int) -> CpuRun:
    topic = f"benchmin{uuid.uuid4().hex[:8]}"
    await create_topic(bootstrap, topic)
    log_path = RESULTS / "cpu_minimal.log"
    with log_path.open("wb") as log:
        timed = await time_process(
            sim,
            lambda: asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.minimal",
                sim.url,
                bootstrap,
                topic,
                cwd=ROOT,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            ),
            log_path,
        )
    minimal_events = await topic_records(bootstrap, topic)
    if minimal_events != truth:
        raise RuntimeError(f"cpu: minimal pipeline wrote {minimal_events}, {truth} in truth")
    first, run = await backfills_on_prefix(
        sim,
        bootstrap,
        f"benchcpu{uuid.uuid4().hex[:8]}",
        [RESULTS / "cpu_first.log", RESULTS / "cpu.log"],
        UNLIMITED,
        truth,
    )
    return CpuRun(truth, run, first, timed.seconds, minimal_events, timed.cpu_seconds)


def hydration_scenario(events: int) -> Scenario:
    """Thin events only, over the last day, each object with EVENTS_PER_OBJECT on average."""
    return dataclasses.replace(
        load_scenario("bench"),
        history_events=events,
        history_span_seconds=86400.0,
        history_bursts=0,
        live_rate=0.0,
        v2_share=1.0,
        events_per_object=EVENTS_PER_OBJECT,
        rate_limit=100.0,
        endpoint_rate_limit=0.0,
        latency_min_ms=50.0,
        latency_max_ms=150.0,
    )


@dataclass(frozen=True)
class HydrationRun:
    events: int
    objects: int
    list_requests: int
    requests: int
    seconds: float

    @property
    def per_event(self) -> float:
        return self.requests / self.events


async def measure_hydration(session: aiohttp.ClientSession, bootstrap: str) -> HydrationRun:
    """A v2-only backfill: requests (lists and retrieves) per thin event."""
    print(f"bench: hydration, {HYDRATION_EVENTS:,} thin events ...", flush=True)
    sim = await start_sim(hydration_scenario(HYDRATION_EVENTS), 19, session)
    try:
        truth = (await sim.get("/_sim/truth"))["events"]
        objects = len({e["object_id"] for e in truth if e["object_id"]})
        run = await run_ingestor(
            sim,
            bootstrap,
            f"benchhyd{uuid.uuid4().hex[:8]}",
            RESULTS / "hydration.log",
            {
                "INGESTOR_STRIPE__V1": "false",
                "INGESTOR_STRIPE__V2": "true",
                "INGESTOR_STRIPE__ENDPOINT_RATE_LIMIT": "100",
            },
        )
    finally:
        stop_sim(sim)
    if run.events != len(truth) or run.unique != len(truth):
        raise RuntimeError(f"hydration: {run.events} records, {run.unique} of {len(truth)}")
    return HydrationRun(len(truth), objects, run.list_requests, run.requests, run.seconds)


def tail_scenario() -> Scenario:
    """The throughput run's quiet account (`bench.run.tail_scenario`), with no late events and
    no endpoint limit: what is measured is how soon a visible event is committed."""
    return dataclasses.replace(run_tail_scenario(), late_share=0.0, endpoint_rate_limit=0.0)


@dataclass(frozen=True)
class TailLatency:
    rate: float
    events: int
    measured: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    list_per_s: float  # list requests per second while the traffic ran


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _new_leader_retry(record: logging.LogRecord) -> bool:
    """False for aiokafka's "Failed fetch offsets" error about a leader not serving yet.

    The watcher subscribes by pattern, so it assigns a topic the ingestor has just created
    before that topic's leader serves it; aiokafka logs each retry of the offset lookup as an
    error and retries until it succeeds (the ingestor waits for leaders before producing).
    """
    return not (
        record.msg == "Failed fetch offsets from %s: %s"
        and isinstance(record.args, tuple)
        and isinstance(record.args[-1], NotLeaderForPartitionError)
    )


async def _watch(
    bootstrap: str, prefix: str, seen: dict[bytes, float], stop: asyncio.Event
) -> None:
    """Notes the wall time (ms) each event id first becomes readable (read_committed)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        fetch_max_wait_ms=20,
        metadata_max_age_ms=200,
    )
    await consumer.start()
    fetcher_log = logging.getLogger("aiokafka.consumer.fetcher")
    fetcher_log.addFilter(_new_leader_retry)
    try:
        consumer.subscribe(pattern=rf"^{re.escape(prefix)}\.(?!_ingestor_state).*")
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=50, max_records=10_000)
            now = time.time() * 1000
            for messages in batches.values():
                for m in messages:
                    key = next(v for k, v in m.headers if k == "event_id")
                    seen.setdefault(key, now)
    finally:
        await consumer.stop()
        fetcher_log.removeFilter(_new_leader_retry)


async def measure_tail_latency(sim: Sim, bootstrap: str, log_path: Path) -> TailLatency:
    """Visible in the API -> readable committed, per event, after a warm-up."""
    prefix = f"benchlat{uuid.uuid4().hex[:8]}"
    http_port = _free_port()
    env = ingestor_env(sim, bootstrap, prefix, http_port, {"INGESTOR_STRIPE__V2": "false"})
    seen: dict[bytes, float] = {}
    stop = asyncio.Event()
    with log_path.open("wb") as log:
        proc = await spawn_ingestor([], env, log)
        try:
            async with asyncio.TaskGroup() as tg:
                watcher = tg.create_task(_watch(bootstrap, prefix, seen, stop))
                await wait_ready(sim, http_port, proc, log_path, "tail")
                started_ms = time.time() * 1000
                lists = await sim.list_requests()
                await sim.post("/_sim/config", {"live_rate": TAIL_RATE})
                await asyncio.sleep(TAIL_SECONDS)
                await sim.post("/_sim/config", {"live_rate": 0.0})
                list_per_s = (await sim.list_requests() - lists) / TAIL_SECONDS
                truth = [
                    e
                    for e in (await sim.get("/_sim/truth"))["events"]
                    if e["created_ms"] >= started_ms
                ]
                wait_until = time.monotonic() + 60
                while sum(1 for e in truth if e["id"].encode() in seen) < len(truth):
                    if time.monotonic() > wait_until or watcher.done():
                        break
                    await asyncio.sleep(0.2)
                stop.set()
        finally:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()
    missing = [e["id"] for e in truth if e["id"].encode() not in seen]
    if missing:
        raise RuntimeError(f"tail: {len(missing)} of {len(truth)} events never committed")
    warm = started_ms + TAIL_WARMUP_SECONDS * 1000
    lags = [seen[e["id"].encode()] - e["visible_ms"] for e in truth if e["visible_ms"] >= warm]
    return TailLatency(
        TAIL_RATE, len(truth), len(lags), _pct(lags, 0.5), _pct(lags, 0.99), max(lags), list_per_s
    )


async def measure_tail(session: aiohttp.ClientSession, bootstrap: str) -> TailLatency:
    print(f"bench: live tail at {TAIL_RATE:g} events/s, {TAIL_SECONDS:g} s ...", flush=True)
    sim = await start_sim(tail_scenario(), 23, session)
    try:
        return await measure_tail_latency(sim, bootstrap, RESULTS / "tail_latency.log")
    finally:
        stop_sim(sim)


async def measure_rss(
    session: aiohttp.ClientSession, bootstrap: str, events: int | None
) -> IngestorRun:
    """Peak RSS of a backfill of `backfill_1m.toml` (or of its first `events` events)."""
    scenario = load_scenario("backfill_1m")
    if events is not None:
        scenario = dataclasses.replace(scenario, history_events=events)
    print(f"bench: RSS of a {scenario.history_events:,}-event backfill ...", flush=True)
    sim = await start_sim(scenario, 11, session)
    try:
        truth = (await sim.get("/_sim/config"))["events"]
        run = await run_ingestor(
            sim,
            bootstrap,
            f"benchrss{uuid.uuid4().hex[:8]}",
            RESULTS / f"rss_{scenario.history_events}.log",
            {"STRIPE_RATE_LIMIT": "1000", "INGESTOR_STRIPE__ENDPOINT_RATE_LIMIT": "1000"},
        )
    finally:
        stop_sim(sim)
    if run.events != truth or run.unique != truth:
        raise RuntimeError(f"rss: {run.events} records, {run.unique} distinct, {truth} in truth")
    return run


@dataclass
class Targets:
    cpu: CpuRun | None = None
    hydration: HydrationRun | None = None
    tail: TailLatency | None = None
    rss: dict[int, IngestorRun] = dataclasses.field(default_factory=dict)


async def measure_targets(
    session: aiohttp.ClientSession, args: argparse.Namespace, which: set[str]
) -> Targets:
    t = Targets()
    # Each stage starts on a broker holding none of the earlier stages' topics.
    if "cpu" in which:
        await drop_bench_topics(args.bootstrap)
        t.cpu = await measure_cpu(session, args.bootstrap, CPU_EVENTS)
    if "hydration" in which:
        await drop_bench_topics(args.bootstrap)
        t.hydration = await measure_hydration(session, args.bootstrap)
    if "tail" in which:
        await drop_bench_topics(args.bootstrap)
        t.tail = await measure_tail(session, args.bootstrap)
    if "rss" in which:
        await drop_bench_topics(args.bootstrap)
        t.rss[RSS_SMALL_EVENTS] = await measure_rss(session, args.bootstrap, RSS_SMALL_EVENTS)
        if not args.skip_rss:
            await drop_bench_topics(args.bootstrap)
            big = await measure_rss(session, args.bootstrap, None)
            t.rss[big.events] = big
    return t


def targets_lines(t: Targets) -> list[str]:
    rows = ["| figure | target | measured |", "|---|---|---|"]
    if t.cpu is not None:
        c = t.cpu
        rows.append(
            f"| CPU-bound backfill ({c.events // 1000}k v1 events, no latency, no limit) vs a "
            f"minimal pipeline on the same data, both into existing topics | >= 1.0 | "
            f"**{c.ratio:.2f}**, the median of {len(c.ratios)} interleaved pairs "
            f"({', '.join(f'{r:.2f}' for r in c.ratios)}); that pair: "
            f"{c.ingestor.events_per_s:,.0f} vs {c.minimal_per_s:,.0f} events/s, "
            f"CPU {c.ingestor.cpu_seconds * 1e6 / c.events:.0f} vs "
            f"{c.minimal_cpu_seconds * 1e6 / c.events:.0f} us/event; the ingestor's first "
            f"run, creating its topics: {', '.join(f'{r:.2f}' for r in c.first_ratios)} "
            f"({c.first.events_per_s:,.0f} events/s, CPU "
            f"{c.first.cpu_seconds * 1e6 / c.events:.0f} us/event) |"
        )
    if t.hydration is not None:
        h = t.hydration
        rows.append(
            f"| API requests per thin event ({h.events:,} events, {h.events / h.objects:.1f} "
            f"per related object) | <= 0.35 | **{h.per_event:.2f}** ({h.requests:,} requests: "
            f"{h.list_requests} list pages; floor {(h.objects + h.list_requests) / h.events:.2f}"
            " = one retrieve per object) |"
        )
    if t.tail is not None:
        lat = t.tail
        rows.append(
            f"| live tail at {lat.rate:g} events/s: visible in the API -> committed, p99 | "
            f"<= {POLL_INTERVAL * 1000 + 300:,.0f} ms (poll {POLL_INTERVAL:g} s + 300 ms) | "
            f"**{lat.p99_ms:,.0f} ms** (p50 {lat.p50_ms:,.0f}, max {lat.max_ms:,.0f}; "
            f"{lat.measured:,} of {lat.events:,} events after {TAIL_WARMUP_SECONDS:g} s; "
            f"{lat.list_per_s:.0f} list requests/s) |"
        )
    for events, run in sorted(t.rss.items()):
        limit = 250 if events <= RSS_SMALL_EVENTS else 400
        rows.append(
            f"| peak RSS, {events:,}-event backfill | <= {limit} MB | "
            f"**{run.peak_rss_mb:.0f} MB** ({run.events_per_s:,.0f} events/s) |"
        )
    return rows if len(rows) > 2 else []


def targets_json(t: Targets) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if t.cpu is not None:
        out["cpu_bound"] = {
            "events": t.cpu.events,
            "ingestor_events_per_s": t.cpu.ingestor.events_per_s,
            "minimal_events_per_s": t.cpu.minimal_per_s,
            "ingestor_cpu_seconds": t.cpu.ingestor.cpu_seconds,
            "minimal_cpu_seconds": t.cpu.minimal_cpu_seconds,
            "ratio": t.cpu.ratio,
            "pair_ratios": list(t.cpu.ratios),
            "first_run_events_per_s": t.cpu.first.events_per_s,
            "first_run_cpu_seconds": t.cpu.first.cpu_seconds,
            "first_run_pair_ratios": list(t.cpu.first_ratios),
        }
    if t.hydration is not None:
        h = t.hydration
        out["hydration"] = {
            "events": h.events,
            "objects": h.objects,
            "requests": h.requests,
            "list_requests": h.list_requests,
            "requests_per_event": h.per_event,
        }
    if t.tail is not None:
        out["tail_latency_ms"] = dataclasses.asdict(t.tail)
    if t.rss:
        out["peak_rss_mb"] = {str(k): v.peak_rss_mb for k, v in t.rss.items()}
    return out
