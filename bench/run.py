"""`make bench`: backfill throughput against its floor and ceiling, and a 1M-event backfill's RSS.

Every figure comes from the same run on the same machine, with the simulator in its own process
and the ingestor as a subprocess (`python -m ingestor run --backfill --once`) publishing to the
real broker, exactly once:

- floor: one sequential cursor (aiohttp paging `/v1/events` with `starting_after`, limit 100,
  writing nothing) against the same simulator: what a naive loop gets out of the latency.
- ceiling: the rate limit times the page size (100 req/s x 100 events = 10,000 events/s).
- under Stripe's limits: a v1 backfill with 25 req/s on `GET /v1/events` (and 100 req/s global)
  against its ceiling of 25 x 100 = 2,500 events/s, with the share of requests answered 429.
- small backfill: 40,000 events at 100 ms per request, 100 req/s, no endpoint limit, against
  10,000 events/s: most accounts' backfills are this small, so the ramp-up counts. It runs
  twice on one prefix: first creating its topics, then into the topics that exist.
- start: process start (spawn) -> the simulator's first request.
- ingestor: events committed (counted back with a read_committed consumer, each id exactly
  once) / wall time from the simulator's first request to the process's exit.
- CPU-bound vs a minimal pipeline, API requests per thin event, the live tail's visible ->
  committed p99, peak RSS (VmHWM from /proc) of a 100k and a 1M backfill: `bench/targets.py`.
- CPU seconds of each benchmarked process (its rusage once reaped): steadier than wall time
  when other work shares the cores.

`--only STAGE,...` runs some stages (limits, cpu, hydration, tail, rss, throughput);
`--skip-rss` leaves out the 1M backfill. The results table goes to stdout and to
`bench/results/latest.md`, the figures (with the load average before and after) to
`bench/results/latest.json` (both git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import os
import re
import resource
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ingestor.sim.scenario import Scenario, load_scenario

if TYPE_CHECKING:
    from bench.targets import Targets
from ingestor.sim.server import serve as serve_sim

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RATE_LIMIT = 100.0
PAGE_SIZE = 100
CEILING = RATE_LIMIT * PAGE_SIZE
LATENCY_MS = (50.0, 150.0)
API_KEY = "sk_test_bench_0123456789"
LIST_ENDPOINTS = ("GET /v1/events", "GET /v2/core/events")
# Stripe's documented per-operation limit, and what a v1 list can therefore reach.
ENDPOINT_LIMIT = 25.0
STRIPE_CEILING = ENDPOINT_LIMIT * PAGE_SIZE
STRIPE_LIMITS_EVENTS = 30_000
SMALL_EVENTS = 40_000
SMALL_LATENCY_MS = (100.0, 100.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run_sim(port: int, scenario: Scenario, seed: int) -> None:
    asyncio.run(serve_sim("127.0.0.1", port, scenario, seed))


@dataclass
class Sim:
    """The simulator in a child process (its CPU is not the ingestor's), driven over HTTP."""

    url: str
    process: BaseProcess
    session: aiohttp.ClientSession

    async def get(self, path: str) -> Any:
        async with self.session.get(self.url + path) as r:
            r.raise_for_status()
            return await r.json(loads=orjson.loads)

    async def post(self, path: str, body: Mapping[str, Any]) -> Any:
        async with self.session.post(self.url + path, data=orjson.dumps(body)) as r:
            r.raise_for_status()
            return await r.json(loads=orjson.loads)

    async def list_requests(self) -> int:
        counters: dict[str, dict[str, int]] = await self.get("/_sim/counters")
        return sum(sum(counters.get(e, {}).values()) for e in LIST_ENDPOINTS)

    async def requests(self) -> int:
        counters: dict[str, dict[str, int]] = await self.get("/_sim/counters")
        return sum(sum(per.values()) for per in counters.values())

    async def limited(self) -> int:
        """Requests the simulator answered 429 (any limiter)."""
        counters: dict[str, dict[str, int]] = await self.get("/_sim/counters")
        return sum(per.get("429", 0) for per in counters.values())


async def start_sim(scenario: Scenario, seed: int, session: aiohttp.ClientSession) -> Sim:
    """The simulator in a child process, its history rendered before anything is timed.

    It shares the 2 cores with the process measured; rendering a page's events the first
    time costs it CPU that Stripe's servers would spend on theirs, and that a second run on
    the same simulator (its cache warm) would not pay. Warmed first, every run is served
    alike: a first run no longer pays about a CPU-second of rendering per 40k events.
    """
    port = _free_port()
    child = multiprocessing.get_context("spawn").Process(
        target=_run_sim, args=(port, scenario, seed), daemon=True
    )
    child.start()
    sim = Sim(f"http://127.0.0.1:{port}", child, session)
    deadline = time.monotonic() + 300
    while True:  # building a large history takes a while; the child gives no other signal
        try:
            await sim.get("/_sim/config")
            break
        except aiohttp.ClientConnectionError:
            if time.monotonic() > deadline or not child.is_alive():
                raise
        await asyncio.sleep(0.25)
    await sim.post("/_sim/warm", {})
    return sim


def stop_sim(sim: Sim) -> None:
    sim.process.terminate()
    sim.process.join(15)


async def measure_floor(sim: Sim, seconds: float) -> float:
    """Events/s of one sequential `starting_after` cursor over `/v1/events`, writing nothing."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    events = 0
    cursor: str | None = None
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        params = {"limit": str(PAGE_SIZE)}
        if cursor:
            params["starting_after"] = cursor
        async with sim.session.get(sim.url + "/v1/events", params=params, headers=headers) as r:
            if r.status == 429:
                continue
            r.raise_for_status()
            body = await r.json(loads=orjson.loads)
        events += len(body["data"])
        cursor = body["data"][-1]["id"] if body["has_more"] else None
    return events / (time.monotonic() - started)


@dataclass(frozen=True)
class IngestorRun:
    exit_code: int
    events: int
    unique: int
    seconds: float
    peak_rss_mb: float
    list_requests: int
    requests: int
    limited: int = 0
    startup_seconds: float = 0.0
    cpu_seconds: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    @property
    def limited_share(self) -> float:
        return self.limited / max(1, self.requests)


def cpu_times() -> list[int] | None:
    """The machine's CPU time counters (user, nice, system, idle, iowait, irq, softirq,
    steal), from /proc/stat; None where there is none (not Linux)."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    return [int(x) for x in fields[1:9]] if fields[:1] == [b"cpu"] else None


def steal_share(before: list[int] | None, after: list[int] | None) -> float | None:
    """The share of CPU time the hypervisor gave to other guests between two `cpu_times`:
    figures measured on a machine losing half its CPU this way are not those of an idle one."""
    if before is None or after is None:
        return None
    spent = [b - a for a, b in zip(before, after, strict=True)]
    return spent[7] / sum(spent) if sum(spent) > 0 else None


def memory_free_mb() -> float | None:
    """MemFree from /proc/meminfo in MB (None where there is none): the broker's first writes
    into new partitions cost seconds more when free memory must first be reclaimed from the
    page cache."""
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
    except OSError:
        return None
    return int(info["MemFree"].split()[0]) / 1024


LOOP_STEPS = 10_000_000


def python_loop_seconds(steps: int = LOOP_STEPS) -> float:
    """Seconds this process takes for a plain Python loop of `steps` additions: the speed of a
    core as the run met it. On this virtual machine it has moved 1.5x within an hour with 0%
    steal in /proc/stat, and the bench's wall-time figures moved with it."""
    started = time.perf_counter()
    total = 0
    for i in range(steps):
        total += i
    return time.perf_counter() - started


def machine_line(
    steal: float | None, free_mb: float | None, loop_s: tuple[float, float] | None = None
) -> str:
    """The conditions line on the machine itself, for every table; `loop_s` is
    `python_loop_seconds` at the run's start and end."""
    parts = [f"{os.cpu_count()} CPUs", "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())]
    if steal is not None:
        parts.append(f"CPU steal {steal:.0%} of CPU time during the run")
    if free_mb is not None:
        parts.append(f"{free_mb / 1024:.1f} GB of memory free (not cache) at the start")
    if loop_s is not None:
        parts.append(
            f"a {LOOP_STEPS / 1e6:g}M-step Python loop took {loop_s[0]:.2f} s at the start and "
            f"{loop_s[1]:.2f} s at the end"
        )
    return "Machine: " + ", ".join(parts) + "."


def _peak_rss_mb(pid: int) -> float | None:
    """VmHWM: the kernel's own peak RSS of the process so far (no sample can miss a spike)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


def _log_tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


async def wait_ready(
    sim: Sim, http_port: int, proc: asyncio.subprocess.Process, log_path: Path, what: str
) -> None:
    """Waits up to 60 s for the ingestor's /readyz to answer 200; raises with its log tail if
    it never does or exits first."""
    deadline = time.monotonic() + 60
    while True:
        try:
            async with sim.session.get(f"http://127.0.0.1:{http_port}/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline or proc.returncode is not None:
            raise RuntimeError(f"{what} never became ready:\n" + _log_tail(log_path))
        await asyncio.sleep(0.2)


def ingestor_env(
    sim: Sim, bootstrap: str, prefix: str, http_port: int, extra: Mapping[str, str]
) -> dict[str, str]:
    """The ingestor's environment for a run against the benchmark's simulator."""
    return {
        **os.environ,
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": sim.url,
        "STRIPE_RATE_LIMIT": str(RATE_LIMIT),
        # An account whose per-operation limits Stripe raised: the global limit is what binds.
        "INGESTOR_STRIPE__ENDPOINT_RATE_LIMIT": str(RATE_LIMIT),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "INGESTOR_TOPIC_PREFIX": prefix,
        "INGESTOR_HTTP_PORT": str(http_port),
        "INGESTOR_LOG__FORMAT": "json",
        # The partitions the published numbers were measured with (the ingestor's old
        # default), not whatever the broker's num.partitions is.
        "INGESTOR_KAFKA__TOPIC_PARTITIONS": "6",
        "INGESTOR_KAFKA__TOPIC_REPLICATION": "1",
        **extra,
    }


async def spawn_ingestor(
    flags: list[str], env: Mapping[str, str], log: BinaryIO
) -> asyncio.subprocess.Process:
    """`python -m ingestor run FLAGS` with its output in `log`; under py-spy (a flame graph
    next to the log; BENCH_PROFILE=raw: collapsed stacks) when BENCH_PROFILE is set."""
    profile: list[str] = []
    if mode := os.environ.get("BENCH_PROFILE"):
        # "raw": collapsed stacks (one line per stack and its sample count), to sum up by frame.
        fmt = ["--format", "raw"] if mode == "raw" else []
        out = Path(log.name).with_suffix(".txt" if fmt else ".svg")
        profile = [str(Path(sys.executable).parent / "py-spy"), "record", *fmt, "-o", str(out)]
        profile.append("--")
    return await asyncio.create_subprocess_exec(
        *profile,
        sys.executable,
        "-m",
        "ingestor",
        "run",
        *flags,
        env=dict(env),
        cwd=ROOT,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )


@dataclass(frozen=True)
class Timed:
    """A benchmarked process: exit code, first request -> exit, spawn -> first request, RSS."""

    code: int
    seconds: float
    startup_seconds: float
    peak_rss_mb: float
    cpu_seconds: float


async def time_process(
    sim: Sim, spawn: Callable[[], Awaitable[asyncio.subprocess.Process]], log_path: Path
) -> Timed:
    """Runs `spawn()`'s process to its exit, timed from the simulator's first request (the
    counters are reset first), and from its spawn to that request; peak RSS polled."""
    await sim.post("/_sim/counters/reset", {})
    # CPU time of reaped children: the process once it exits (the simulator lives on). Less
    # noisy than wall time on a shared machine.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    spawned = time.monotonic()
    proc = await spawn()
    first: float | None = None
    peak = 0.0
    wait = asyncio.ensure_future(proc.wait())
    while not wait.done():
        if first is None and await sim.requests() > 0:
            first = time.monotonic()
        peak = max(peak, _peak_rss_mb(proc.pid) or 0.0)
        await asyncio.wait([wait], timeout=0.01 if first is None else 0.5)
    ended = time.monotonic()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    code = wait.result()
    if code != 0:
        raise RuntimeError(
            f"{log_path.stem} exited {code}; last log lines:\n" + _log_tail(log_path)
        )
    assert first is not None
    return Timed(code, ended - first, first - spawned, peak, cpu)


async def run_ingestor(
    sim: Sim,
    bootstrap: str,
    prefix: str,
    log_path: Path,
    env: Mapping[str, str],
    since: Mapping[TopicPartition, int] | None = None,
) -> IngestorRun:
    """`ingestor run --backfill --once` as a subprocess; timed from the sim's first request,
    and from its spawn to that request (start-up). Counts what it committed after `since`."""
    with log_path.open("wb") as log:
        timed = await time_process(
            sim,
            lambda: spawn_ingestor(
                ["--backfill", "--once"], ingestor_env(sim, bootstrap, prefix, 0, env), log
            ),
            log_path,
        )
    events, unique = await count_committed(bootstrap, prefix, since)
    return IngestorRun(
        timed.code,
        events,
        unique,
        timed.seconds,
        timed.peak_rss_mb,
        await sim.list_requests(),
        await sim.requests(),
        await sim.limited(),
        timed.startup_seconds,
        timed.cpu_seconds,
    )


async def _event_partitions(bootstrap: str, prefix: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [
            t
            for t in await admin.list_topics()
            if t.startswith(prefix + ".") and not t.endswith("._ingestor_state")
        ]
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    return [TopicPartition(d["topic"], p["partition"]) for d in described for p in d["partitions"]]


async def end_offsets(bootstrap: str, prefix: str) -> dict[TopicPartition, int]:
    """The end offset of every event partition under the prefix (what a later count skips)."""
    tps = await _event_partitions(bootstrap, prefix)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(tps)) if tps else {}
    finally:
        await consumer.stop()


# Every topic a benchmark makes: bench<kind><8 hex> itself or under it as a prefix.
BENCH_TOPIC = re.compile(r"bench[a-z_]*[0-9a-f]{8}(\.|$)")


async def drop_bench_topics(bootstrap: str) -> int:
    """Deletes every topic an earlier stage or run of the benchmark made; returns how many.

    Each run makes its topics under a prefix of its own (26 topics of 6 partitions for a
    backfill), and a broker left holding thousands of their partitions stalls for seconds now
    and then, which the next stage measures instead of the ingestor. Run before each stage.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if BENCH_TOPIC.match(t)]
        for at in range(0, len(names), 100):
            await admin.delete_topics(names[at : at + 100])
        for _ in range(300):
            if not any(BENCH_TOPIC.match(t) for t in await admin.list_topics()):
                return len(names)
            await asyncio.sleep(0.1)
        raise RuntimeError("bench: its topics were not deleted within 30 s")
    finally:
        await admin.close()


async def forget_state(bootstrap: str, prefix: str) -> None:
    """Deletes the prefix's state topic, so the next run backfills again into the event
    topics that exist (as a new account's backfill does); returns once it is gone."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        state = f"{prefix}._ingestor_state"
        await admin.delete_topics([state])
        for _ in range(100):
            if state not in await admin.list_topics():
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{state} was not deleted within 10 s")
    finally:
        await admin.close()


async def count_committed(
    bootstrap: str, prefix: str, since: Mapping[TopicPartition, int] | None = None
) -> tuple[int, int]:
    """(records, distinct event ids) a read_committed consumer sees under the prefix, after
    the offsets `since` (an earlier `end_offsets`) where given."""
    tps = await _event_partitions(bootstrap, prefix)
    start = dict(since or {})
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    records = 0
    ids: set[bytes] = set()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        for tp in tps:
            if start.get(tp, 0) > 0:
                consumer.seek(tp, start[tp])
        end = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if end[tp] > start.get(tp, 0)}
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=500, max_records=10_000)
            for tp, messages in batches.items():
                for m in messages:
                    if m.offset < end[tp]:
                        records += 1
                        ids.add(next(v for k, v in m.headers if k == "event_id"))
            for tp in list(pending):
                if await consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return records, len(ids)


@dataclass
class TailRun:
    rate: float
    seconds: float
    events: int
    drain_seconds: float
    unique: int
    records: int
    lag_p50: float
    lag_p99: float

    @property
    def events_per_s(self) -> float:
        return self.events / (self.seconds + self.drain_seconds)


def tail_scenario() -> Scenario:
    """A quiet account until the run turns on live traffic; late events and bursts included."""
    return dataclasses.replace(
        load_scenario("bench"),
        history_events=100,
        history_bursts=0,
        live_rate=0.0,
        v2_share=0.0,
        accounts=(),
        late_share=0.02,
        lag_min_seconds=1.0,
        lag_max_seconds=5.0,
        rate_limit=RATE_LIMIT,
        latency_min_ms=LATENCY_MS[0],
        latency_max_ms=LATENCY_MS[1],
    )


def _metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _quantile(text: str, name: str, q: float) -> float:
    """Upper bucket bound holding quantile q of a Prometheus histogram."""
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        m = re.match(rf'{name}_bucket\{{le="([^"]+)"\}} (\S+)', line)
        if m:
            buckets.append((float(m.group(1)), float(m.group(2))))
    count = buckets[-1][1] if buckets else 0.0
    for bound, cumulative in buckets:
        if cumulative >= q * count:
            return bound
    return float("inf")


async def measure_tail(
    sim: Sim, bootstrap: str, prefix: str, rate: float, seconds: float, log_path: Path
) -> TailRun:
    """`ingestor run` (tail only) while the simulator creates `rate` events/s for `seconds`;
    then live traffic stops and the time to publish everything is measured too."""
    http_port = _free_port()
    env = ingestor_env(sim, bootstrap, prefix, http_port, {"INGESTOR_STRIPE__V2": "false"})
    metrics_url = f"http://127.0.0.1:{http_port}/metrics"
    with log_path.open("wb") as log:
        proc = await spawn_ingestor([], env, log)
        try:
            await wait_ready(sim, http_port, proc, log_path, "tail run")
            started_ms = int(time.time() * 1000)
            await sim.post("/_sim/config", {"live_rate": rate})
            await asyncio.sleep(seconds)
            await sim.post("/_sim/config", {"live_rate": 0.0})
            stopped = time.monotonic()
            await asyncio.sleep(6)  # late events (1-5 s) become visible
            truth = [
                e for e in (await sim.get("/_sim/truth"))["events"] if e["created_ms"] >= started_ms
            ]
            wanted = len(truth)
            while True:
                async with sim.session.get(metrics_url) as r:
                    text = await r.text()
                if _metric_sum(text, "ingestor_events_published_total") >= wanted:
                    break
                if time.monotonic() - stopped > 300:
                    raise RuntimeError("tail run did not catch up within 5 minutes")
                await asyncio.sleep(0.5)
            drain = max(0.0, time.monotonic() - stopped - 6)
            p50 = _quantile(text, "ingestor_event_lag_seconds", 0.5)
            p99 = _quantile(text, "ingestor_event_lag_seconds", 0.99)
        finally:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()
    records, unique = await count_committed(bootstrap, prefix)
    return TailRun(rate, seconds, wanted, drain, unique, records, p50, p99)


def throughput_scenario(events: int) -> Scenario:
    return dataclasses.replace(
        load_scenario("bench"),
        history_events=events,
        history_span_seconds=7 * 86400.0,
        history_bursts=10,
        burst_size=500,
        live_rate=0.0,
        v2_share=0.0,
        rate_limit=RATE_LIMIT,
        latency_min_ms=LATENCY_MS[0],
        latency_max_ms=LATENCY_MS[1],
    )


def limits_scenario(
    events: int, *, endpoint_rate: float, latency_ms: tuple[float, float]
) -> Scenario:
    """A v1-only history over the 29 days before now (inside the default 30-day backfill, so
    every slice has events) on the platform stream, under a 100 req/s global limit (live mode)
    and `endpoint_rate` per operation (0 = none), with fixed per-request latency."""
    return dataclasses.replace(
        load_scenario("bench"),
        history_events=events,
        history_span_seconds=29 * 86400.0,
        history_bursts=2,
        burst_size=500,
        live_rate=0.0,
        v2_share=0.0,
        rate_limit=RATE_LIMIT,
        endpoint_rate_limit=endpoint_rate,
        latency_min_ms=latency_ms[0],
        latency_max_ms=latency_ms[1],
    )


@dataclass(frozen=True)
class LimitRuns:
    stripe: IngestorRun  # 25 req/s on the list, 100 global
    small: IngestorRun  # 40k events, 100 req/s global, no endpoint limit, topics made by it
    small_existing: IngestorRun  # the same backfill again, into the topics the first made


async def _limits_run(
    session: aiohttp.ClientSession,
    args: argparse.Namespace,
    scenario: Scenario,
    name: str,
    env: Mapping[str, str],
    *,
    again: bool = False,
) -> list[IngestorRun]:
    """One backfill on a fresh prefix (its topics are made during the run); with `again`, a
    second one of the same history into the topics that now exist, as a deployment's later
    backfills (a newly connected account's) meet them: the broker's first writes into a new
    partition cost it seconds of CPU (about 150 partitions here), a cost paid once per topic."""
    sim = await start_sim(scenario, 13, session)
    try:
        truth = (await sim.get("/_sim/config"))["events"]
        logs = [RESULTS / f"{name}.log", RESULTS / f"{name}_existing_topics.log"]
        return await backfills_on_prefix(
            sim,
            args.bootstrap,
            f"bench{name}{uuid.uuid4().hex[:8]}",
            logs if again else logs[:1],
            {"INGESTOR_STRIPE__V2": "false", **env},
            truth,
        )
    finally:
        stop_sim(sim)


async def backfills_on_prefix(
    sim: Sim,
    bootstrap: str,
    prefix: str,
    logs: Sequence[Path],
    env: Mapping[str, str],
    truth: int,
) -> list[IngestorRun]:
    """One backfill per log on one prefix: the first makes its topics, each later one runs
    after `forget_state` into the topics that exist and counts only what it added. Each must
    commit the simulator's `truth` events exactly once."""
    runs: list[IngestorRun] = []
    for attempt, log_path in enumerate(logs):
        since = None
        if attempt:
            await forget_state(bootstrap, prefix)
            since = await end_offsets(bootstrap, prefix)
        run = await run_ingestor(sim, bootstrap, prefix, log_path, env, since)
        if run.events != truth or run.unique != truth:
            raise RuntimeError(
                f"{log_path.stem}: not exactly once: {run.events} records, {run.unique} "
                f"distinct, {truth}"
            )
        runs.append(run)
    return runs


async def measure_limits(session: aiohttp.ClientSession, args: argparse.Namespace) -> LimitRuns:
    """The backfill under Stripe's per-operation limit, and the small 40k-event backfill."""
    print(
        f"bench: {STRIPE_LIMITS_EVENTS:,}-event backfill under Stripe's limits "
        f"({ENDPOINT_LIMIT:g} req/s on the list, {RATE_LIMIT:g} global) ...",
        flush=True,
    )
    [stripe] = await _limits_run(
        session,
        args,
        limits_scenario(
            STRIPE_LIMITS_EVENTS, endpoint_rate=ENDPOINT_LIMIT, latency_ms=SMALL_LATENCY_MS
        ),
        "stripe_limits",
        # Stripe's documented per-operation default, as a user would run it.
        {"INGESTOR_STRIPE__ENDPOINT_RATE_LIMIT": str(ENDPOINT_LIMIT)},
    )
    print(f"bench: {SMALL_EVENTS:,}-event backfill, no endpoint limit ...", flush=True)
    small, existing = await _limits_run(
        session,
        args,
        limits_scenario(SMALL_EVENTS, endpoint_rate=0.0, latency_ms=SMALL_LATENCY_MS),
        "small_backfill",
        {},
        again=True,
    )
    return LimitRuns(stripe, small, existing)


def limits_lines(runs: LimitRuns) -> list[str]:
    s, m, w = runs.stripe, runs.small, runs.small_existing
    return [
        "| figure | target | measured |",
        "|---|---|---|",
        f"| v1 backfill under Stripe's limits ({ENDPOINT_LIMIT:g} req/s on the list), as a "
        f"fraction of {STRIPE_CEILING:,.0f} events/s | >= 0.9, 429s <= 1% | "
        f"**{s.events_per_s / STRIPE_CEILING:.2f}** ({s.events_per_s:,.0f} events/s), "
        f"429s {s.limited_share:.1%} ({s.limited} of {s.requests}) |",
        f"| {SMALL_EVENTS // 1000}k-event backfill, {SMALL_LATENCY_MS[0]:g} ms, "
        f"{RATE_LIMIT:g} req/s global, no endpoint limit, fraction of {CEILING:,.0f} events/s "
        f"| >= 0.8 | into existing topics **{w.events_per_s / CEILING:.2f}** "
        f"({w.events_per_s:,.0f} events/s, {w.list_requests} pages in {w.seconds:.1f} s); "
        f"first run, creating its topics, {m.events_per_s / CEILING:.2f} "
        f"({m.seconds:.1f} s) |",
        f"| process start -> first Stripe request | <= 1 s | "
        f"**{min(s.startup_seconds, m.startup_seconds):.2f} s** "
        f"({s.startup_seconds:.2f} s and {m.startup_seconds:.2f} s in the two runs) |",
        "",
        f"Conditions: v1 events only over 29 days, platform stream, backfill of the default "
        f"30 days, {SMALL_LATENCY_MS[0]:g} ms per request, "
        f"simulator enforcing a {RATE_LIMIT:g} req/s global limit (live mode) and, in the first "
        f"run, {ENDPOINT_LIMIT:g} req/s per operation, with the client at the same limits; "
        f"{STRIPE_LIMITS_EVENTS:,} and {SMALL_EVENTS:,} events; time from the first request "
        "to the process's exit, everything committed exactly once into the real broker. "
        f"The {SMALL_EVENTS // 1000}k backfill runs twice on one prefix: first creating its "
        "topics (the broker's first writes into each new partition cost it seconds of CPU), "
        "then, its state topic deleted, again into the topics that exist, as a deployment's "
        "later backfills (a newly connected account's) meet them.",
    ]


def limits_json(runs: LimitRuns) -> dict[str, Any]:
    s, m, w = runs.stripe, runs.small, runs.small_existing
    return {
        "stripe_limits": {
            "events": s.events,
            "seconds": s.seconds,
            "events_per_s": s.events_per_s,
            "ceiling": STRIPE_CEILING,
            "fraction": s.events_per_s / STRIPE_CEILING,
            "requests": s.requests,
            "limited": s.limited,
            "limited_share": s.limited_share,
            "cpu_seconds": s.cpu_seconds,
        },
        **{
            key: {
                "events": r.events,
                "seconds": r.seconds,
                "events_per_s": r.events_per_s,
                "ceiling": CEILING,
                "fraction": r.events_per_s / CEILING,
                "pages": r.list_requests,
                "cpu_seconds": r.cpu_seconds,
            }
            for key, r in (("small_backfill", m), ("small_backfill_existing_topics", w))
        },
        "startup_seconds": min(s.startup_seconds, m.startup_seconds),
    }


def limits_chart(runs: LimitRuns | None, targets: Targets, path: Path) -> bool:
    """A PNG of each backfill's events/s against its ceiling (or, CPU-bound, the minimal
    pipeline's events/s: its floor) and target; False without matplotlib (the `bench` extra)."""
    try:
        import matplotlib  # optional, bench-only dependency

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # after choosing the backend
    except ImportError:
        return False
    rows: list[tuple[str, float, float, float]] = []
    if runs is not None:
        rows += [
            (
                f"v1 backfill, {ENDPOINT_LIMIT:g} req/s per operation",
                runs.stripe.events_per_s,
                STRIPE_CEILING,
                0.9,
            ),
            (
                f"{SMALL_EVENTS // 1000}k backfill, {RATE_LIMIT:g} req/s global",
                runs.small_existing.events_per_s,
                CEILING,
                0.8,
            ),
        ]
    if targets.cpu is not None:
        rows.append(
            (
                f"CPU-bound {targets.cpu.events // 1000}k backfill\n(grey: minimal pipeline)",
                targets.cpu.ingestor.events_per_s,
                targets.cpu.minimal_per_s,
                1.0,
            )
        )
    if not rows:
        return True
    fig, ax = plt.subplots(figsize=(8, 1.2 + 1.0 * len(rows)))
    for i, (_, value, ceiling, target) in enumerate(rows):
        ax.barh(i, ceiling, color="#e8e8e8", label="ceiling or floor" if i == 0 else None)
        ax.barh(i, value, color="#3b6ea8", label="ingestor" if i == 0 else None)
        ax.plot(
            [ceiling * target] * 2,
            [i - 0.4, i + 0.4],
            color="#c0392b",
            lw=2,
            label="target" if i == 0 else None,
        )
        ax.text(
            value,
            i,
            f" {value:,.0f} ({value / ceiling:.2f})",
            va="center",
        )
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_xlabel("events/s (first request to exit, exactly once into Kafka)")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


STAGES = ("limits", "cpu", "hydration", "tail", "rss", "throughput")


async def bench(args: argparse.Namespace) -> str:
    # Imported here: bench.targets builds on this module's helpers.
    from bench.targets import measure_targets, targets_json, targets_lines

    RESULTS.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:8]
    which = set(STAGES) if args.only is None else set(args.only.split(","))
    if args.only_limits:
        which = {"limits"}
    if unknown := which - set(STAGES):
        raise SystemExit(f"bench: unknown stages {sorted(unknown)}; known: {STAGES}")
    lines: list[str] = []
    figures: dict[str, Any] = {"cpus": os.cpu_count(), "load_average": os.getloadavg()}
    times_before, free_mb = cpu_times(), memory_free_mb()
    figures["memory_free_mb"] = free_mb
    loop_before = python_loop_seconds()
    figures["python_loop_seconds"] = loop_before
    async with aiohttp.ClientSession() as session:
        limit_runs: LimitRuns | None = None
        if "limits" in which:
            await drop_bench_topics(args.bootstrap)
            limit_runs = await measure_limits(session, args)
            lines += [*limits_lines(limit_runs), ""]
            figures.update(limits_json(limit_runs))
        targets = await measure_targets(session, args, which)
        if target_rows := targets_lines(targets):
            lines += [*target_rows, ""]
        figures.update(targets_json(targets))
        figures["load_average_after"] = os.getloadavg()
        # Over the stages latest.json holds (the throughput stage below is not in it).
        steal = steal_share(times_before, cpu_times())
        figures["cpu_steal_share"] = steal
        loop_after = python_loop_seconds()
        figures["python_loop_seconds_after"] = loop_after
        (RESULTS / "latest.json").write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
        if not limits_chart(limit_runs, targets, RESULTS / "limits.png"):
            print("bench: no matplotlib (pip install -e '.[bench]'): no chart", flush=True)
        if "throughput" not in which:
            return "\n".join([*lines, machine_line(steal, free_mb, (loop_before, loop_after)), ""])
        await drop_bench_topics(args.bootstrap)
        scenario = throughput_scenario(args.events)
        print(f"bench: simulator with {args.events:,} events of history ...", flush=True)
        sim = await start_sim(scenario, 7, session)
        try:
            truth = (await sim.get("/_sim/config"))["events"]
            print(f"bench: floor (one sequential cursor, {args.floor_seconds:g} s) ...", flush=True)
            floor = await measure_floor(sim, args.floor_seconds)
            print("bench: ingestor run --backfill --once ...", flush=True)
            run = await run_ingestor(
                sim,
                args.bootstrap,
                f"bench{run_id}",
                RESULTS / "throughput.log",
                {"INGESTOR_STRIPE__V2": "false"},
            )
        finally:
            stop_sim(sim)
        if run.events != truth or run.unique != truth:
            raise RuntimeError(
                f"not exactly once: {run.events} records, {run.unique} distinct, {truth} in truth"
            )
        print(f"bench: live tail at {args.tail_rate:g} events/s ...", flush=True)
        await drop_bench_topics(args.bootstrap)
        sim = await start_sim(tail_scenario(), 5, session)
        try:
            tail = await measure_tail(
                sim,
                args.bootstrap,
                f"benchtail{run_id}",
                args.tail_rate,
                args.tail_seconds,
                RESULTS / "tail.log",
            )
        finally:
            stop_sim(sim)
        if tail.records != tail.events or tail.unique != tail.events:
            raise RuntimeError(
                f"tail not exactly once: {tail.records} records, {tail.unique} distinct, "
                f"{tail.events} in truth"
            )
    lines += [
        "| figure | events/s | vs. ceiling | vs. floor |",
        "|---|---:|---:|---:|",
        f"| floor: one sequential `starting_after` cursor, limit 100 | {floor:,.0f} "
        f"| {floor / CEILING:.2f} | 1.0x |",
        f"| ceiling: {RATE_LIMIT:g} req/s x {PAGE_SIZE} events/page | {CEILING:,.0f} | 1.00 "
        f"| {CEILING / floor:.1f}x |",
        f"| **ingestor `run --backfill --once`** | **{run.events_per_s:,.0f}** "
        f"| **{run.events_per_s / CEILING:.2f}** | **{run.events_per_s / floor:.1f}x** |",
        "",
        f"Ingestor run: {run.events:,} events committed exactly once in {run.seconds:.1f} s "
        f"(first request to exit), {run.list_requests:,} list requests "
        f"({run.events / max(1, run.list_requests):.1f} events/request), "
        f"{run.requests:,} requests in all, peak RSS {run.peak_rss_mb:.0f} MB.",
        "",
        f"Live tail (`ingestor run`, no backfill) while the simulator creates "
        f"{tail.rate:,.0f} events/s for {tail.seconds:g} s (2% visible 1-5 s late): "
        f"{tail.events:,} events exactly once, all published {tail.drain_seconds:.1f} s after "
        f"traffic stopped ({tail.events_per_s:,.0f} events/s overall, "
        f"{tail.events_per_s / floor:.1f}x the floor); event lag at commit p50 <= "
        f"{tail.lag_p50:g} s, p99 <= {tail.lag_p99:g} s (histogram buckets).",
    ]
    lines += [
        "",
        f"Conditions: simulator in its own process, {LATENCY_MS[0]:g}-{LATENCY_MS[1]:g} ms "
        f"latency per request, {RATE_LIMIT:g} req/s rate limit (429 beyond), "
        f"{args.events:,} v1 events over 7 days with same-second bursts; ingestor budget "
        f"{RATE_LIMIT:g} req/s, real Kafka broker on {args.bootstrap}, exactly once; "
        f"{os.cpu_count()} CPUs shared by simulator, ingestor and broker.",
        "",
        # Again at the end: the throughput and tail runs count too.
        machine_line(
            steal_share(times_before, cpu_times()), free_mb, (loop_before, python_loop_seconds())
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    parser.add_argument("--events", type=int, default=350_000, help="throughput run history")
    parser.add_argument("--floor-seconds", type=float, default=10.0)
    parser.add_argument("--skip-rss", action="store_true", help="skip the 1M-event RSS run")
    parser.add_argument(
        "--only-limits", action="store_true", help="only the runs under Stripe's limits"
    )
    parser.add_argument("--only", help=f"comma-separated stages to run, of {','.join(STAGES)}")
    parser.add_argument("--tail-rate", type=float, default=3000.0, help="live events/s")
    parser.add_argument("--tail-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    table = asyncio.run(bench(args))
    out = RESULTS / "latest.md"
    out.write_text(table)
    print()
    print(table, end="")
    print(f"(written to {out.relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
