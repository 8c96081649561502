"""Deterministic simulation: the real service in fast-forwarded time against the simulator's
model (in-process transport) and an in-memory log with Kafka's semantics.

A `Plan` is drawn from a seed: traffic (steady, bursts, same-second runs on one object, late
events up to the sweep window), and a timeline of crashes at random instants, graceful stops
and stops shorter and longer than the sweep window (up to 2 days), broker outages, API fault
mixes, accounts that connect mid-run (found by the `accounts = all` rescan, or in the cron
mode between two runs) and a connected account revoked mid-run, restored later or never.
`run_plan` plays it at the service's default settings, then checks the invariants against
the simulator's ground truth: every visible event published exactly once, per-object order
within each Kafka partition (except events visible later than the overlap), bounded state,
and no alarm without a lost window.

What "visible" means for Connect (README, Connected accounts): an account connected mid-run
is read from its connection time (the `created` of its authorization event, or of the
account), so every event it has is expected. A revoked account that gets its access back
is read on from its cursor, so every event it has, those made while it was revoked too, is
expected. One never restored is parked and reported (a `/readyz` detail while the service
runs, and the final `--once` exits 1); the events it made after its revocation, and those
that became visible less than `REVOKE_MARGIN_S` before it, were never readable by us and
are not counted as lost. So that "before" is well defined, a revocation never restored comes
once the service has committed what that account had visible by the margin (a catch-up
after a long stop can take half an hour: thin events are hydrated at their budget share);
one that does not get there within `CATCH_UP_CAP_S` fails the seed.

Replay one seed: `python -m tests.simulation.run --seed N --hours H [--max-rate R]` (the
failure message prints the exact command, `Plan.replay`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import structlog

from ingestor import clock, config, state
from ingestor.clock import LoopClock
from ingestor.config import KafkaConfig
from ingestor.health import Readiness
from ingestor.log.memory import MemoryBroker, MemoryLog
from ingestor.pipeline import configured_apis, serve
from ingestor.sim.inprocess import InProcessTransport
from ingestor.sim.scenario import Faults, Scenario, load_scenario
from ingestor.sim.simulator import Simulator

EPOCH_MS = 1_790_000_000_000  # 2026-09-21: a fixed start keeps every seed reproducible
PREFIX = "sim"
KEY = "sk_test_simulation_0123456789"
CONNECTED = "acct_1SimConnected0000000"
REVOKED = "acct_1SimRevoked000000000"
# A revocation never restored: the events that became visible this long before it must have
# been read (one sweep interval plus its run at the sweep's budget share, and the poll).
REVOKE_MARGIN_S = 240.0
CATCH_UP_CAP_S = 3 * 3600.0


def joined_account(n: int) -> str:
    """The id of the `n`th account a plan connects mid-run."""
    return f"acct_1SimJoined{n:09d}"


HOUR = 3600.0
DAY = 86400.0
# The service's defaults this harness relies on for its checks (asserted against config).
OVERLAP_S = 5.0
SWEEP_WINDOW_S = 600.0
# looptime idles this many loop cycles before it moves time to the next timer (42 by default),
# a grace for threads and sockets. The simulation has neither: with nothing ready, only a
# timer can wake it, so time moves at once, the same run with 40 times fewer empty cycles.
NOOP_CYCLES = 0


@dataclass(frozen=True, slots=True)
class Step:
    """One thing that happens to the running service at `at` simulated seconds."""

    at: float
    # crash | stop | kill_stop | outage | faults | calm | burst | same_second | connect |
    # revoke | restore. `connect`: `joined_account(count)` connects, its authorization event
    # visible `seconds` late; `revoke` / `restore`: REVOKED loses / gets back its access.
    kind: str
    seconds: float = 0.0
    count: int = 0


@dataclass(frozen=True, slots=True)
class Plan:
    seed: int
    hours: float
    rate: float
    late_share: float
    lag_max: float
    v2_share: float
    accounts: tuple[str, ...]
    steps: tuple[Step, ...]
    # `--once` every this many seconds (the cron use) instead of a long-running service.
    cron_seconds: float = 0.0
    # `STRIPE_ACCOUNTS=all`: the accounts are found by GET /v1/accounts (and rescans), not
    # configured; only then can an account connect mid-run.
    discover: bool = False
    # The `python -m tests.simulation.run` arguments that draw this plan again (make_plan's
    # own arguments: a capped or fixed rate changes every draw after it); "" = built by hand.
    replay: str = ""

    @property
    def restored(self) -> bool:
        """Whether REVOKED, if revoked, gets its access back before the end."""
        return any(s.kind == "restore" for s in self.steps)

    def describe(self) -> str:
        kinds = Counter(s.kind for s in self.steps)
        mode = f"--once every {self.cron_seconds:g} s" if self.cron_seconds else "service"
        return (
            f"seed {self.seed} ({mode}): {self.hours:g} h at {self.rate:g} events/s, "
            f"{self.late_share:.0%} late up to {self.lag_max:.0f} s, v2 {self.v2_share:.0%}, "
            f"accounts {len(self.accounts)}{' (all)' if self.discover else ''}, "
            + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
        )


def make_plan(
    seed: int, *, hours: float = 1.0, rate: float | None = None, max_rate: float | None = None
) -> Plan:
    """Draws a scenario from `seed`: the same seed always gives the same plan. One seed in
    five runs `--once` every 15 minutes (the cron use) instead of a long-running service."""
    rng = random.Random(seed)
    replay = f"--seed {seed} --hours {hours:g}"
    replay += "" if rate is None else f" --rate {rate:g}"
    replay += "" if max_rate is None else f" --max-rate {max_rate:g}"
    if seed % 5 == 4:
        cron_rate = rng.choice([5.0, 20.0])
        cron_v2 = rng.choice([0.0, 0.2])
        # Connect while no process runs: accounts that connect between two runs, and one
        # whose access is revoked between two and restored before a later one.
        cron_span = hours * HOUR
        found: list[Step] = []
        cron_accounts: tuple[str, ...] = ()
        if rng.random() < 0.5:
            for n in range(rng.choice([1, 2])):
                found.append(Step(rng.uniform(30, cron_span - 60), "connect", 0.0, n))
            if rng.random() < 0.5:
                cron_accounts = (REVOKED,)
                at = rng.uniform(30, cron_span - 60)
                back = min(at + rng.uniform(20, 1800), cron_span - 30)
                found += [Step(at, "revoke"), Step(back, "restore")]
        return Plan(
            seed=seed,
            hours=hours,
            rate=cron_rate,
            late_share=0.1,
            lag_max=SWEEP_WINDOW_S - 60,
            v2_share=cron_v2,
            accounts=cron_accounts,
            steps=tuple(sorted(found, key=lambda s: s.at)),
            cron_seconds=900.0,
            discover=bool(found),
            replay=replay,
        )
    rates = [r for r in (5.0, 10.0, 20.0, 50.0) if max_rate is None or r <= max_rate]
    rate = rate if rate is not None else rng.choice(rates)
    span = hours * HOUR
    steps: list[Step] = []
    n = max(3, int(rng.uniform(4, 10) * hours))
    for _ in range(n):
        at = rng.uniform(30, span - 30)
        kind = rng.choices(
            ["crash", "stop", "kill_stop", "outage", "faults", "calm", "burst", "same_second"],
            weights=[5, 2, 2, 2, 2, 1, 2, 2],
        )[0]
        if kind in ("stop", "kill_stop"):
            # Shorter and longer than the sweep window, and now and then up to 2 days.
            seconds = rng.choice(
                [rng.uniform(5, 60), rng.uniform(60, 500), rng.uniform(700, 3600)]
                + ([rng.uniform(6 * HOUR, 2 * DAY)] if rng.random() < 0.3 else [])
            )
            steps.append(Step(at, kind, seconds=seconds))
        elif kind == "outage":
            steps.append(Step(at, kind, seconds=rng.uniform(2, 120)))
        elif kind == "faults":
            steps.append(Step(at, kind, seconds=rng.uniform(30, 300)))
        elif kind == "burst":
            steps.append(Step(at, kind, count=rng.randint(120, 450)))
        elif kind == "same_second":
            steps.append(Step(at, kind, count=rng.randint(2, 8)))
        else:
            steps.append(Step(at, kind))
    accounts: tuple[str, ...] = ()
    revoke_at = 0.0
    if rng.random() < 0.5:
        accounts = (CONNECTED,)
        if rng.random() < 0.5:
            accounts += (REVOKED,)
            revoke_at = rng.uniform(60, span - 60)
            steps.append(Step(revoke_at, "revoke"))
    late_share = rng.choice([0.0, 0.02, 0.1])
    lag_max = rng.choice([OVERLAP_S * 2, 120.0, SWEEP_WINDOW_S - 60])
    v2_share = rng.choice([0.0, 0.1, 0.3])
    # Drawn after the rest, so the draws above (and the seeds' plans) stay as they were.
    discover = rng.random() < 0.5
    if discover:
        for n in range(rng.choice([0, 1, 1, 2])):
            steps.append(Step(rng.uniform(30, span - 60), "connect", rng.uniform(0, 30), n))
    if revoke_at and rng.random() < 0.5:
        # Back before the parked retry (10 min), or after it; within retention either way.
        steps.append(Step(revoke_at + rng.uniform(20, 900), "restore"))
    steps.sort(key=lambda s: s.at)
    return Plan(
        seed=seed,
        hours=hours,
        rate=rate,
        late_share=late_share,
        lag_max=lag_max,
        v2_share=v2_share,
        accounts=accounts,
        steps=tuple(steps),
        discover=discover,
        replay=replay,
    )


@dataclass(slots=True)
class Report:
    """What one run did and what the checks found."""

    plan: Plan
    events: int = 0
    published: int = 0
    crashes: int = 0
    stops: int = 0
    outages: int = 0
    connects: int = 0
    revokes: int = 0
    restores: int = 0
    joined_events: int = 0  # of accounts connected mid-run, among `events`
    while_revoked: int = 0  # of REVOKED made while it was revoked, among `events` if restored
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)
    unbounded: list[str] = field(default_factory=list)
    false_alarms: list[str] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)
    max_state_ids: int = 0
    max_state_bytes: int = 0
    requests: int = 0  # answered by the simulator's Stripe API, faults and 429s included
    wall_seconds: float = 0.0
    simulated_hours: float = 0.0

    @property
    def ok(self) -> bool:
        return not (
            self.lost or self.duplicated or self.out_of_order or self.unbounded or self.false_alarms
        )

    def summary(self) -> str:
        return (
            f"{self.plan.describe()} | {self.events} events, {self.crashes} crashes, "
            f"{self.stops} stops, {self.outages} outages, {self.connects} connects, "
            f"{self.revokes} revokes ({self.restores} restored) | lost {len(self.lost)}, "
            f"duplicated {len(self.duplicated)}, out of order {len(self.out_of_order)}, "
            f"unbounded {len(self.unbounded)}, false alarms {len(self.false_alarms)} | "
            f"{self.requests} requests, {self.simulated_hours:.1f} simulated h in "
            f"{self.wall_seconds:.1f} s"
        )

    def failure(self) -> str:
        parts = [self.summary()]
        for name in ("lost", "duplicated", "out_of_order", "unbounded", "false_alarms"):
            items = getattr(self, name)
            if items:
                parts.append(f"{name}: {items[:5]}")
        parts.append(
            f"replay: python -m tests.simulation.run {self.plan.replay}"
            if self.plan.replay
            else f"replay: the test that built this plan by hand (seed {self.plan.seed})"
        )
        return "\n".join(parts)


class _LogCounter:
    """A structlog processor that counts events by name and keeps warnings and errors, then
    drops everything (a day of simulated batches must not cost a day of log formatting)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.errors: list[dict[str, Any]] = []

    def __call__(
        self, _logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> Mapping[str, Any]:
        self.counts[str(event_dict.get("event"))] += 1
        if method in ("warning", "error", "critical"):
            self.errors.append(dict(event_dict))
        raise structlog.DropEvent


@contextmanager
def _quiet_logs() -> Iterator[_LogCounter]:
    counter = _LogCounter()
    old = structlog.get_config()
    structlog.configure(
        processors=[counter],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=False,
    )
    # aiokafka is not used here, but asyncio's own debug chatter would cost time too.
    try:
        yield counter
    finally:
        structlog.configure(**old)


def _settings(plan: Plan) -> config.Loaded:
    env = {
        "STRIPE_API_KEY": KEY,
        "STRIPE_API_BASE": "http://stripe.sim",
        "INGESTOR_TOPIC_PREFIX": PREFIX,
        "STRIPE_ACCOUNTS": "all" if plan.discover else ",".join(("platform", *plan.accounts)),
        "INGESTOR_STRIPE__V2": "true" if plan.v2_share > 0 else "false",
        "KAFKA_BOOTSTRAP_SERVERS": "memory:9092",
    }
    loaded = config.load(env=env, defaults_file=None)
    # The checks below assume the defaults: the point is to test them, not shrunk windows.
    assert loaded.config.tail.overlap_seconds == OVERLAP_S
    assert loaded.config.tail.sweep_window_seconds == SWEEP_WINDOW_S
    return loaded


def _scenario(plan: Plan) -> Scenario:
    return dataclasses.replace(
        load_scenario(None),
        name=f"seed-{plan.seed}",
        start_time=EPOCH_MS / 1000,
        history_events=int(plan.rate * 600) + 50,
        history_span_seconds=2 * DAY,
        history_bursts=1,
        burst_size=250,
        v2_share=plan.v2_share,
        accounts=plan.accounts,
        platform_share=0.7 if plan.accounts or _connects(plan) else 1.0,
        live_rate=plan.rate,
        live_burst_interval_seconds=0.0,
        late_share=plan.late_share,
        lag_min_seconds=min(OVERLAP_S + 1, plan.lag_max),
        lag_max_seconds=plan.lag_max,
        latency_min_ms=40.0,
        latency_max_ms=160.0,
        faults=Faults(),
        # Stripe-shaped events with small objects: the pipeline parses and routes them like
        # any other, and a day of sweeps does not cost a day of rendering and skipping 3 KB.
        slim_objects=True,
    )


def _connects(plan: Plan) -> list[Step]:
    return [s for s in plan.steps if s.kind == "connect"]


# The simulator's fault mix for a fault window, plus a rate limit below the client's budget
# so that 429s come too.
FAULT_MIX = Faults(
    error_500=0.03,
    error_503_html=0.02,
    conflict_409=0.01,
    reset=0.02,
    truncate=0.02,
    stall=0.005,
    stall_seconds=30.0,
)
FAULT_RATE_LIMIT = 15.0
# A revoked stream is parked at its next poll (403) or at the deauthorization event.
PARK_NOTICE_S = 60.0


# looptime 0.9's (name-mangled) set of executor futures; see `lean_loop`.
LOOPTIME_SYNC_FUTURES = "_LoopTimeEventLoop__sync_futures"


class _LeanWeakSet(weakref.WeakSet[Any]):
    """A WeakSet that is free to iterate while empty (WeakSet's guard costs ~1 us a pass)."""

    def __iter__(self) -> Iterator[Any]:
        return super().__iter__() if len(self) else iter(())


def lean_loop() -> None:
    """Makes the running looptime loop cheaper per iteration for a simulation.

    looptime 0.9 checks its executor futures (a WeakSet) on every pass of the loop, to step
    time while a thread runs. A simulation starts no thread, so the set stays empty, but
    iterating an empty WeakSet cost up to 14% of a test's CPU (1,000 idle streams, each
    pass waking a few timers). The set is swapped for one that keeps WeakSet's behaviour and
    returns at once while empty. Call it inside the test (looptime resets the set when it
    sets a test's loop up); a looptime without that attribute is left alone.
    """
    loop = asyncio.get_running_loop()
    current = getattr(loop, LOOPTIME_SYNC_FUTURES, None)
    if isinstance(current, weakref.WeakSet) and not isinstance(current, _LeanWeakSet):
        lean = _LeanWeakSet()
        for fut in current:
            lean.add(fut)
        setattr(loop, LOOPTIME_SYNC_FUTURES, lean)


async def run_plan(
    plan: Plan,
    *,
    make_transport: Callable[[Simulator], InProcessTransport] = InProcessTransport.for_simulator,
) -> Report:
    """Plays `plan` against the real service in fast-forwarded time and checks it
    (`make_transport`: one that also records the answers, as `floor.py`'s does)."""
    lean_loop()
    # The service's retry and pacing jitter draws from the module-level generator: seeded,
    # so that a replay of a seed makes the same requests in the same order.
    random.seed(plan.seed)
    report = Report(plan)
    wall = time.perf_counter()
    with clock.use(LoopClock(EPOCH_MS)), _quiet_logs() as logs:
        loaded = _settings(plan)
        sim = Simulator(_scenario(plan), seed=plan.seed)
        broker = MemoryBroker(keep_values=False)
        transport = make_transport(sim)
        logs_open: list[MemoryLog] = []

        def open_log(cfg: KafkaConfig) -> MemoryLog:
            log = MemoryLog(broker, cfg)
            logs_open.append(log)
            return log

        async with transport:
            stop = asyncio.Event()
            first = True
            readiness = Readiness()
            started = 0.0

            def start() -> asyncio.Task[int]:
                nonlocal first, stop, readiness, started
                started = clock.monotonic()
                stop = asyncio.Event()
                readiness = Readiness()
                run = serve(
                    loaded,
                    backfill=first,
                    stop=stop,
                    readiness=readiness,
                    transport=transport,
                    open_log=open_log,
                    http=False,
                )
                first = False
                return asyncio.ensure_future(run)

            async def kill(task: asyncio.Task[int]) -> None:
                # kill -9: whatever was in flight is gone; the broker keeps what committed.
                task.cancel()
                for log in logs_open:
                    log.crash()
                logs_open.clear()
                # Whatever the dying process still raises (its log is gone) is moot.
                with suppress(asyncio.CancelledError, Exception, BaseExceptionGroup):
                    await task

            async def graceful(task: asyncio.Task[int]) -> None:
                stop.set()
                report.exit_codes.append(await task)
                logs_open.clear()

            t0 = clock.monotonic()
            revoked_ms = restored_ms = 0
            if plan.cron_seconds:
                revoked_ms, restored_ms = await _cron(
                    plan, sim, loaded, transport, open_log, report, t0
                )
                task = start()  # the final stop below expects a running service
            else:
                task = start()
            faults_until = 0.0
            revoked_mono = 0.0
            outage_end = 0.0
            for step in () if plan.cron_seconds else plan.steps:
                await asyncio.sleep(max(0.0, step.at - (clock.monotonic() - t0)))
                _sample_state(broker, loaded, report)
                if faults_until and clock.monotonic() >= faults_until:
                    sim.set_faults(Faults(), rate_limit=0.0)
                    faults_until = 0.0
                if task.done():
                    # The service must never exit by itself while it is meant to run.
                    report.false_alarms.append(f"service exited early: {task.result()!r}")
                    task = start()
                if step.kind == "crash":
                    report.crashes += 1
                    await kill(task)
                    task = start()
                elif step.kind in ("stop", "kill_stop"):
                    report.stops += 1
                    if step.kind == "stop":
                        await graceful(task)
                    else:
                        report.crashes += 1
                        await kill(task)
                    if step.seconds > HOUR:
                        # A long stop at full traffic would be millions of events to replay;
                        # the point is the length of the stop, not the volume.
                        sim.tick()
                        sim.set_live_rate(min(plan.rate, 0.05))
                        await asyncio.sleep(step.seconds)
                        sim.tick()
                        sim.set_live_rate(plan.rate)
                    else:
                        await asyncio.sleep(step.seconds)
                    task = start()
                elif step.kind == "outage":
                    report.outages += 1
                    outage_end = max(outage_end, clock.monotonic() + step.seconds)
                    broker.outage(clock.monotonic() + step.seconds)
                elif step.kind == "faults":
                    sim.set_faults(FAULT_MIX, rate_limit=FAULT_RATE_LIMIT)
                    faults_until = clock.monotonic() + step.seconds
                elif step.kind == "calm":
                    sim.set_faults(Faults(), rate_limit=0.0)
                    faults_until = 0.0
                elif step.kind == "burst":
                    sim.add_events(step.count, type="charge.updated")
                elif step.kind == "same_second":
                    _same_second(sim, step.count)
                elif step.kind == "connect":
                    report.connects += 1
                    sim.connect_account(joined_account(step.count), lag_seconds=step.seconds)
                elif step.kind == "revoke":
                    if not plan.restored:
                        await _caught_up(sim, broker, loaded.config.kafka.state_topic, report)
                    report.revokes += 1
                    revoked_ms = sim.now_ms()
                    revoked_mono = clock.monotonic()
                    sim.revoke_account(REVOKED)
                elif step.kind == "restore":
                    report.restores += 1
                    restored_ms = sim.now_ms()
                    sim.connect_account(REVOKED)
            end = plan.hours * HOUR
            if revoked_ms and not plan.restored:
                # Time for the running service to notice (a 403 or the deauthorization).
                # (From the latest of the revocation, the last start, as a new process parks
                # the account at its first read, and the end of a broker outage, during which
                # the pipeline waits to restore its state and reads nothing: seed 557.)
                notice_from = max(revoked_mono, started, outage_end)
                end = max(end, notice_from - t0 + PARK_NOTICE_S)
            await asyncio.sleep(max(0.0, end - (clock.monotonic() - t0)))
            if revoked_ms and not plan.restored:
                # The park is reported while the service runs (a /readyz detail per stream),
                # also by a process started after the revocation.
                want = {f"{api}:{REVOKED}" for api in configured_apis(loaded.config)}
                if not want <= set(readiness.parked):
                    report.false_alarms.append(
                        f"revoked streams not parked: {sorted(want - set(readiness.parked))}"
                    )
            sim.set_faults(Faults(), rate_limit=0.0)
            await graceful(task)
            # Let every late event become visible, then one `--once` run catches up.
            sim.tick()
            sim.set_live_rate(0.0)
            # (An authorization event is late by its own lag: the connect step's.)
            await asyncio.sleep(max([plan.lag_max] + [s.seconds for s in _connects(plan)]) + 5)
            final = serve(loaded, once=True, transport=transport, open_log=open_log, http=False)
            code = await final
            report.exit_codes.append(code)
            report.simulated_hours = (clock.monotonic() - t0) / HOUR
            _sample_state(broker, loaded, report)
            _check(plan, sim, broker, loaded, logs, report, code, revoked_ms, restored_ms)
            # Every answer is counted once by its status ('stall' also counts its answer).
            report.requests = sum(
                n
                for per in sim.counters().values()
                for status, n in per.items()
                if status != "stall"
            )
    report.wall_seconds = time.perf_counter() - wall
    return report


async def _cron(
    plan: Plan,
    sim: Simulator,
    loaded: config.Loaded,
    transport: InProcessTransport,
    open_log: Any,
    report: Report,
    t0: float,
) -> tuple[int, int]:
    """`ingestor run --once` every `cron_seconds`, the first one with `--backfill`; the
    plan's Connect steps happen between runs. Returns when REVOKED was revoked and restored
    (0: never). A run exits 1 exactly while REVOKED is revoked (its streams are parked)."""
    first = True
    pending = list(plan.steps)
    revoked_ms = restored_ms = 0
    while clock.monotonic() - t0 < plan.hours * HOUR:
        began = clock.monotonic()
        code = await serve(
            loaded, backfill=first, once=True, transport=transport, open_log=open_log, http=False
        )
        first = False
        report.stops += 1
        if code != (1 if REVOKED in sim.revoked else 0):
            report.false_alarms.append(f"cron run exited {code}")
        next_run = began + plan.cron_seconds
        while pending and t0 + pending[0].at < next_run:
            step = pending.pop(0)
            await asyncio.sleep(max(0.0, t0 + step.at - clock.monotonic()))
            if step.kind == "connect":
                report.connects += 1
                sim.connect_account(joined_account(step.count), lag_seconds=step.seconds)
            elif step.kind == "revoke":
                report.revokes += 1
                revoked_ms = sim.now_ms()
                sim.revoke_account(REVOKED)
            elif step.kind == "restore":
                report.restores += 1
                restored_ms = sim.now_ms()
                sim.connect_account(REVOKED)
        await asyncio.sleep(max(0.0, next_run - clock.monotonic()))
    return revoked_ms, restored_ms


async def _caught_up(
    sim: Simulator, broker: MemoryBroker, state_topic: str, report: Report
) -> None:
    """Waits until every event of REVOKED that was visible `REVOKE_MARGIN_S` ago is
    committed, checking each minute; past `CATCH_UP_CAP_S` the seed fails."""
    events, views = sim.events, sim.views
    streams = {ix for ix, s in enumerate(events.streams) if s.account == REVOKED}
    deadline = clock.monotonic() + CATCH_UP_CAP_S
    while True:
        sim.tick()
        cutoff = sim.now_ms() - int(REVOKE_MARGIN_S * 1000)
        want = {
            views.event_id(n)
            for n in range(len(events))
            if events.visible[n] and events.stream[n] in streams and events.visible_at[n] <= cutoff
        }
        for r in broker.committed_records(PREFIX + "."):
            if want and r.topic != state_topic:
                want.discard(_header(r.headers, "event_id"))
        if not want:
            return
        if clock.monotonic() >= deadline:
            report.false_alarms.append(f"{REVOKED} not caught up in {CATCH_UP_CAP_S:g} s")
            return
        await asyncio.sleep(60.0)


def _same_second(sim: Simulator, count: int) -> None:
    """`count` events on one object in one second (Stripe lists them newest first)."""
    # The last 200 events made visible, read from the store: rendering the whole truth would
    # cost the run's history on every step.
    sim.tick()
    events, views = sim.events, sim.views
    charges = []
    for serial in events.visible_order[-200:]:
        obj = events.obj[serial]
        if views.api_of(serial) != "v1" or obj < 0:
            continue
        if events.streams[events.stream[serial]].account is not None:
            continue
        object_id = views.object_id(obj)
        if object_id.startswith("ch_"):
            charges.append(object_id)
    if charges:
        sim.add_events(count, type="charge.updated", object_id=charges[-1])


def _sample_state(broker: MemoryBroker, loaded: config.Loaded, report: Report) -> None:
    """Size of the state a restart would read: it must stay bounded by rate x window."""
    latest = broker.latest_per_key(loaded.config.kafka.state_topic)
    ids = 0
    size = 0
    for key, value in latest.items():
        size += len(key) + len(value)
        if not state.is_head_key(key):
            ids += len(state.decode_chunk(key, value))
    report.max_state_ids = max(report.max_state_ids, ids)
    report.max_state_bytes = max(report.max_state_bytes, size)


def _check(
    plan: Plan,
    sim: Simulator,
    broker: MemoryBroker,
    loaded: config.Loaded,
    logs: _LogCounter,
    report: Report,
    final_code: int,
    revoked_ms: int = 0,
    restored_ms: int = 0,
) -> None:
    events = sim.events
    views = sim.views
    # A revocation never restored: REVOKED's events are ours if visible by the margin before
    # it; the later ones were never readable. Restored (or never revoked): every event is.
    parked = bool(revoked_ms) and not plan.restored
    revoked_stream = (
        {ix for ix, s in enumerate(events.streams) if s.account == REVOKED} if parked else set()
    )
    readable_until = revoked_ms - int(REVOKE_MARGIN_S * 1000)
    # An account connected mid-run is read from its connection time (rounded down to the
    # second, the unit of an account's `created`); every event it has comes after that.
    starts = {a: ms - ms % 1000 for a, ms in sim.connected_ms.items() if a != REVOKED}
    expected: dict[str, int] = {}
    not_readable: set[str] = set()
    for serial in range(len(events)):
        if not events.visible[serial]:
            continue
        event_id = views.event_id(serial)
        stream = events.stream[serial]
        if stream in revoked_stream and events.visible_at[serial] > readable_until:
            if events.created_ms[serial] > revoked_ms:
                not_readable.add(event_id)
            continue
        account = events.streams[stream].account
        if account in starts:
            report.joined_events += 1
            if events.created_ms[serial] < starts[account]:
                report.false_alarms.append(f"harness: {event_id} before its account connected")
        if account == REVOKED and revoked_ms < events.created_ms[serial] < restored_ms:
            report.while_revoked += 1
        expected[event_id] = serial
    report.events = len(expected)
    records = [
        r
        for r in broker.committed_records(PREFIX + ".")
        if r.topic != loaded.config.kafka.state_topic
    ]
    counts: Counter[str] = Counter()
    for r in records:
        counts[_header(r.headers, "event_id")] += 1
    report.published = sum(counts.values())
    report.duplicated = sorted(i for i, n in counts.items() if n > 1)
    report.lost = sorted(i for i in expected if i not in counts)
    read_anyway = sorted(i for i in not_readable if i in counts)
    if read_anyway:
        report.false_alarms.append(f"read after the revocation: {read_anyway[:5]}")
    report.out_of_order = order_violations(
        ((r.topic, r.partition, r.key, _header(r.headers, "event_id")) for r in records),
        sim,
        int(OVERLAP_S * 1000),
    )
    # Bounded: what a restart reads holds about rate x (sweep window x 2 + slack), never
    # history; the ceiling is generous (bursts and same-second runs add to the rate).
    streams = 2 * (1 + len(plan.accounts) + len(_connects(plan)))
    ceiling = int(plan.rate * SWEEP_WINDOW_S * 3 + 2000 * streams + 3000)
    if report.max_state_ids > ceiling:
        report.unbounded.append(f"state held {report.max_state_ids} ids (> {ceiling})")
    # Alarms: no window was lost in these plans (stops are at most 2 days), so nothing may
    # be reported lost, the gap alarm (7 days) may not fire, no sweep may skip a range (their
    # rates are within what the sweep share re-reads), and the final run exits 0, or 1
    # exactly when a revoked account never restored has its streams parked.
    for name in ("cursor aged out", "cursor gap alarm", "sweeps are slower than their window"):
        hits = [e for e, n in logs.counts.items() if e.startswith(name) for _ in range(n)]
        if hits:
            report.false_alarms.append(f"{len(hits)} x {name}")
    if final_code != (1 if parked else 0):
        report.false_alarms.append(f"final --once exited {final_code}")
    bad_exits = [c for c in report.exit_codes[:-1] if c not in (0,)]
    if bad_exits:
        report.false_alarms.append(f"graceful stops exited {bad_exits}")


def order_violations(
    published: Iterable[tuple[str, int, bytes | None, str]], sim: Simulator, overlap_ms: int
) -> list[str]:
    """Within each (topic, partition, key), in offset order, events must come in Stripe's
    order, oldest first by (created, list position), except events that became visible more
    than the overlap after they were created. `published` is (topic, partition, key, event
    id) in offset order per partition."""
    events, views = sim.events, sim.views
    ids: dict[str, int] = {}
    for n in range(len(events)):
        if events.visible[n]:
            ids[views.event_id(n)] = n
    newest: dict[tuple[str, int, bytes | None], tuple[int, int]] = {}
    out: list[str] = []
    for topic, partition, key, event_id in published:
        serial = ids.get(event_id)
        if serial is None or topic.endswith(".dlq"):
            continue
        if events.visible_at[serial] - events.created_ms[serial] > overlap_ms:
            continue  # late: published when found, out of order by design
        order = (events.created_ms[serial], serial)
        prev = newest.get((topic, partition, key))
        if prev is not None and order < prev:
            out.append(f"{topic}/{partition} {key!r}: {event_id} after {views.event_id(prev[1])}")
        if prev is None or order > prev:
            newest[(topic, partition, key)] = order
    return out


def _header(headers: Any, name: str) -> str:
    for k, v in headers:
        if k == name:
            return v.decode() if isinstance(v, bytes) else str(v)
    raise KeyError(name)
