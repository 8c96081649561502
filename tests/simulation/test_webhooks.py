"""Webhook pushes while the poller runs, in simulated time: exactly once against the truth.

Every live event is delivered to the intake like Stripe's event destinations do it: after a
random delay (so out of order), sometimes twice, sometimes once more long after the sweep
window (Stripe's retries for days), and again with backoff after every 503, across crashes
(kill -9) and broker outages. Checked: every visible event is published exactly once
whichever path saw it first, per-object order holds in strict mode, state stays bounded,
and no delivery is answered 200 unless its event was committed at that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Literal

import orjson
import pytest

from ingestor import clock, config
from ingestor.clock import LoopClock
from ingestor.config import KafkaConfig, WebhookConfig
from ingestor.events import Event, rfc3339_to_ms
from ingestor.log.memory import MemoryBroker, MemoryLog
from ingestor.pipeline import serve
from ingestor.sim.inprocess import InProcessTransport
from ingestor.sim.simulator import Simulator
from ingestor.webhook import Ack, Delivery, Intake
from tests.simulation.world import (
    EPOCH_MS,
    PREFIX,
    Plan,
    Report,
    Step,
    _check,
    _header,
    _quiet_logs,
    _sample_state,
    _scenario,
    _settings,
    lean_loop,
)

pytestmark = [pytest.mark.timeout(600), pytest.mark.looptime]

SECRET = "whsec_simulation0123456789"


def _delivery(sim: Simulator, serial: int) -> Delivery:
    views = sim.views
    if views.api_of(serial) == "v1":
        event = Event.from_v1_raw(views.v1_event(serial))
        return Delivery("v1", event.id, event.type, event.created_ms, event.account, event, None)
    note = orjson.loads(views.v2_event(serial))
    created = rfc3339_to_ms(note["created"])
    return Delivery("v2", note["id"], note["type"], created, note.get("context"), None, note)


class _Stripe:
    """Stripe's side of the event destination: delivers, retries on 503, checks answers."""

    def __init__(self, sim: Simulator, broker: MemoryBroker, rng: random.Random) -> None:
        self.sim = sim
        self.broker = broker
        self.rng = rng
        self.intake: Intake | None = None
        # Intakes of processes killed mid-run: a call into one that was still running when its
        # process died is a dropped connection to Stripe, not an answer.
        self.killed: list[Intake] = []
        self.answers: dict[str, int] = {}
        self.unacked_200: list[str] = []  # answered 200 while not committed: must stay empty
        self.committed: set[str] = set()
        self.delivered = 0

    @contextlib.asynccontextmanager
    async def receiver(self, _w: WebhookConfig, intake: Intake) -> AsyncIterator[None]:
        self.intake = intake
        try:
            yield
        finally:
            self.intake = None

    def _is_committed(self, event_id: str) -> bool:
        if event_id not in self.committed:
            for r in self.broker.committed_records(PREFIX + "."):
                if not r.topic.endswith("_ingestor_state"):
                    self.committed.add(_header(r.headers, "event_id"))
        return event_id in self.committed

    async def deliver(self, serial: int, delay: float) -> None:
        await asyncio.sleep(delay)
        delivery = _delivery(self.sim, serial)
        backoff = 5.0
        while True:
            intake = self.intake
            try:
                ack = Ack.UNAVAILABLE if intake is None else await intake(delivery)
            except Exception:
                # The process was dropped while this call ran inside it (its hydrator, sink and
                # task group are gone): Stripe sees the connection fail and retries. In any
                # process still running, an exception is a bug and fails the run.
                if not any(intake is k for k in self.killed):
                    raise
                ack = Ack.UNAVAILABLE
            self.delivered += 1
            self.answers[ack.value] = self.answers.get(ack.value, 0) + 1
            if ack is not Ack.UNAVAILABLE:
                if ack is not Ack.IGNORED and not self._is_committed(delivery.id):
                    self.unacked_200.append(f"{delivery.id} answered {ack.value}")
                return
            await asyncio.sleep(backoff * (0.5 + self.rng.random()))
            backoff = min(backoff * 2, 600.0)

    async def run(self, tg: asyncio.TaskGroup, until: float) -> None:
        """Delivers every event created from now until `until` (monotonic seconds)."""
        serial = len(self.sim.events)
        while clock.monotonic() < until:
            await asyncio.sleep(0.5)
            self.sim.tick()
            for s in range(serial, len(self.sim.events)):
                tg.create_task(self.deliver(s, self.rng.uniform(0.05, 4.0)))
                if self.rng.random() < 0.1:
                    tg.create_task(self.deliver(s, self.rng.uniform(0.0, 30.0)))
                if self.rng.random() < 0.05:
                    # Longer after than the sweep window: settled by polling, no id kept.
                    tg.create_task(self.deliver(s, self.rng.uniform(700.0, 1500.0)))
            serial = len(self.sim.events)


async def run_webhook_plan(
    plan: Plan, order: Literal["strict", "arrival"]
) -> tuple[Report, _Stripe]:
    lean_loop()
    report = Report(plan)
    rng = random.Random(plan.seed)
    with clock.use(LoopClock(EPOCH_MS)), _quiet_logs() as logs:
        base = _settings(plan)
        w = dataclasses.replace(
            base.config.webhook, enabled=True, secrets=(config.Secret(SECRET),), order=order
        )
        loaded = config.Loaded(dataclasses.replace(base.config, webhook=w), base.sources)
        sim = Simulator(_scenario(plan), seed=plan.seed)
        broker = MemoryBroker(keep_values=False)
        transport = InProcessTransport.for_simulator(sim)
        stripe = _Stripe(sim, broker, rng)
        logs_open: list[MemoryLog] = []

        def open_log(cfg: KafkaConfig) -> MemoryLog:
            log = MemoryLog(broker, cfg)
            logs_open.append(log)
            return log

        stop = asyncio.Event()

        def start(backfill: bool = False) -> asyncio.Task[int]:
            nonlocal stop
            stop = asyncio.Event()
            run = serve(
                loaded,
                backfill=backfill,
                stop=stop,
                transport=transport,
                open_log=open_log,
                http=False,
                receiver=stripe.receiver,
            )
            return asyncio.ensure_future(run)

        async def kill(task: asyncio.Task[int]) -> None:
            task.cancel()
            for log in logs_open:
                log.crash()
            logs_open.clear()
            if stripe.intake is not None:
                stripe.killed.append(stripe.intake)
            stripe.intake = None
            with suppress(asyncio.CancelledError, Exception, BaseExceptionGroup):
                await task

        async with transport:
            t0 = clock.monotonic()
            end = t0 + plan.hours * 3600
            task = start(backfill=True)
            async with asyncio.TaskGroup() as tg:
                pusher = tg.create_task(stripe.run(tg, end))
                for step in plan.steps:
                    await asyncio.sleep(max(0.0, step.at - (clock.monotonic() - t0)))
                    _sample_state(broker, loaded, report)
                    if step.kind == "crash":
                        report.crashes += 1
                        await kill(task)
                        await asyncio.sleep(step.seconds)
                        task = start()
                    elif step.kind == "outage":
                        report.outages += 1
                        broker.outage(clock.monotonic() + step.seconds)
                await pusher
                # Deliveries still retrying finish while the service runs on.
            stop.set()
            report.exit_codes.append(await task)
            sim.tick()
            sim.set_live_rate(0.0)
            await asyncio.sleep(plan.lag_max + 5)
            code = await serve(
                loaded, once=True, transport=transport, open_log=open_log, http=False
            )
            report.exit_codes.append(code)
            _sample_state(broker, loaded, report)
            _check(plan, sim, broker, loaded, logs, report, code)
    return report, stripe


def _plan(seed: int) -> Plan:
    rng = random.Random(seed)
    steps = [Step(rng.uniform(60, 900), "crash", seconds=rng.uniform(1, 30)) for _ in range(3)]
    steps += [Step(rng.uniform(60, 900), "outage", seconds=rng.uniform(2, 60)) for _ in range(2)]
    return Plan(
        seed=seed,
        hours=0.3,
        rate=4.0,
        late_share=0.05,
        lag_max=120.0,
        v2_share=0.3,
        accounts=(),
        steps=tuple(sorted(steps, key=lambda s: s.at)),
    )


@pytest.mark.parametrize("seed", [1, 2])
async def test_pushed_and_polled_events_land_exactly_once_in_order(seed: int) -> None:
    """Strict order: duplicates, reordering, retries past the sweep window, crashes and
    outages while the poller runs; every event exactly once, per-object order kept (except
    late-visible events), and no 200 for an event not committed."""
    report, stripe = await run_webhook_plan(_plan(seed), "strict")
    assert stripe.unacked_200 == []
    assert stripe.answers.get("committed", 0) + stripe.answers.get("duplicate", 0) > 100
    assert stripe.answers.get("unavailable", 0) > 0  # crashes and outages were felt
    assert report.ok, report.failure()


async def test_arrival_order_publishes_pushes_themselves_exactly_once() -> None:
    """Arrival order: pushed payloads are published on arrival (COMMITTED answers), and the
    poller still drops them as duplicates: nothing lost, nothing twice."""
    report, stripe = await run_webhook_plan(_plan(3), "arrival")
    assert stripe.unacked_200 == []
    assert stripe.answers.get("committed", 0) > 100
    assert report.lost == []
    assert report.duplicated == []
    assert report.unbounded == []
