"""Deterministic simulation of scale-out: two processes share the shards through a scripted
group (eager rebalances as Kafka's group protocol makes them), one becomes a zombie that still
believes it owns its shards, and the in-memory log's fencing keeps the output exactly once."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from ingestor import clock, config
from ingestor.clock import LoopClock
from ingestor.config import KafkaConfig
from ingestor.log.memory import MemoryBroker, MemoryLog
from ingestor.pipeline import serve
from ingestor.shards import GroupMembership, ShardSet, shard_of
from ingestor.sim.inprocess import InProcessTransport
from ingestor.sim.scenario import Faults, load_scenario
from ingestor.sim.simulator import Simulator
from tests.simulation.world import (
    EPOCH_MS,
    KEY,
    OVERLAP_S,
    PREFIX,
    _header,
    _quiet_logs,
    lean_loop,
    order_violations,
)

SHARDS = 4
ACCOUNTS = tuple(f"acct_1SimGroup{i:02d}" for i in range(8))


@dataclass
class Member:
    name: str
    shards: ShardSet
    paused: bool = False
    owned: set[int] = field(default_factory=set)


class ScriptedGroup:
    """A group coordinator in simulated time: every join or leave is an eager rebalance
    (each live member revokes everything, then gets a round-robin share). A paused member is
    left out without being told: a zombie, until `wake` delivers its revoke."""

    def __init__(self, shards: int) -> None:
        self.count = shards
        self.members: dict[str, Member] = {}
        self.lock = asyncio.Lock()
        # (shard, owner) for every assignment, in order: who the group said owns what.
        self.assignments: list[tuple[int, str]] = []

    def factory(self, name: str) -> Callable[[KafkaConfig, ShardSet], GroupMembership]:
        """What `serve(shard_group=...)` calls: membership of process `name`."""

        def member(_cfg: KafkaConfig, shards: ShardSet) -> GroupMembership:
            return _Membership(self, Member(name, shards))

        return member

    async def rebalance(self) -> None:
        async with self.lock:
            live = [m for m in self.members.values() if not m.paused]
            for m in live:
                await m.shards.revoked(m.owned)
                m.owned = set()
            for shard in range(self.count):
                m = live[shard % len(live)]
                m.owned.add(shard)
                self.assignments.append((shard, m.name))
            for m in live:
                await m.shards.assigned(m.owned)

    async def join(self, member: Member) -> None:
        self.members[member.name] = member
        await self.rebalance()

    async def leave(self, name: str) -> None:
        member = self.members.pop(name, None)
        if member is not None:
            await member.shards.release_all()
            if self.members:
                await self.rebalance()

    async def pause(self, name: str) -> None:
        """The member stops heartbeating (a long GC pause, a frozen VM) but keeps running."""
        self.members[name].paused = True
        await self.rebalance()

    async def wake(self, name: str) -> None:
        """The zombie learns it was dropped (its heartbeat fails), revokes all, rejoins."""
        m = self.members[name]
        await m.shards.revoked(m.owned)
        m.owned = set()
        m.paused = False
        await self.rebalance()


class _Membership:
    def __init__(self, group: ScriptedGroup, member: Member) -> None:
        self.group = group
        self.member = member

    async def run(self, stop: asyncio.Event) -> None:
        await self.group.join(self.member)
        try:
            await stop.wait()
        finally:
            await self.group.leave(self.member.name)


def settings() -> config.Loaded:
    env = {
        "STRIPE_API_KEY": KEY,
        "STRIPE_API_BASE": "http://stripe.sim",
        "INGESTOR_TOPIC_PREFIX": PREFIX,
        "STRIPE_ACCOUNTS": ",".join(("platform", *ACCOUNTS)),
        "KAFKA_BOOTSTRAP_SERVERS": "memory:9092",
        "INGESTOR_KAFKA__SHARDS": str(SHARDS),
    }
    return config.load(env=env, defaults_file=None)


@pytest.mark.timeout(600)
@pytest.mark.looptime
async def test_two_processes_a_rebalance_and_a_zombie_publish_every_event_once() -> None:
    """Process a owns every shard, b joins (rebalance), then a freezes: the group hands its
    shards to b while a's pipelines keep running as a zombie. Fencing by each shard's
    transactional id stops the zombie's commits; when a wakes it releases and rejoins. Every
    visible event is published exactly once, in per-object order, and the zombie was fenced."""
    hours = 0.25
    lean_loop()
    with clock.use(LoopClock(EPOCH_MS)), _quiet_logs() as logs:
        loaded = settings()
        scenario = dataclasses.replace(
            load_scenario(None),
            start_time=EPOCH_MS / 1000,
            history_events=500,
            history_span_seconds=3600.0,
            accounts=ACCOUNTS,
            platform_share=0.2,
            live_rate=8.0,
            late_share=0.0,
            latency_min_ms=40.0,
            latency_max_ms=160.0,
            faults=Faults(),
        )
        sim = Simulator(scenario, seed=7)
        broker = MemoryBroker(keep_values=False)
        group = ScriptedGroup(SHARDS)
        transport = InProcessTransport.for_simulator(sim)

        def open_log(cfg: KafkaConfig) -> MemoryLog:
            return MemoryLog(broker, cfg)

        async with transport:
            stops = {"a": asyncio.Event(), "b": asyncio.Event()}

            def run(name: str, *, backfill: bool) -> asyncio.Task[int]:
                return asyncio.ensure_future(
                    serve(
                        loaded,
                        backfill=backfill,
                        stop=stops[name],
                        transport=transport,
                        open_log=open_log,
                        shard_group=group.factory(name),
                        http=False,
                    )
                )

            a = run("a", backfill=True)
            await asyncio.sleep(120)
            b = run("b", backfill=True)
            await asyncio.sleep(120)
            await group.pause("a")
            # Longer than a session timeout: each fenced pipeline retries once it has passed.
            await asyncio.sleep(120)
            await group.wake("a")
            await asyncio.sleep(hours * 3600 - 360)
            sim.set_live_rate(0.0)
            await asyncio.sleep(30)
            stops["a"].set()
            stops["b"].set()
            codes = [await a, await b]
    assert codes == [0, 0]
    events, views = sim.events, sim.views
    expected = {views.event_id(n) for n in range(len(events)) if events.visible[n]}
    records = [
        r for r in broker.committed_records("sim.") if r.topic != loaded.config.kafka.state_topic
    ]
    counts = Counter(_header(r.headers, "event_id") for r in records)
    assert not [i for i, n in counts.items() if n > 1], "published twice"
    assert sorted(expected - set(counts)) == [], "lost"
    published = ((r.topic, r.partition, r.key, _header(r.headers, "event_id")) for r in records)
    assert order_violations(published, sim, int(OVERLAP_S * 1000)) == []
    assert broker.stats.fenced > 0, "the zombie was never fenced"
    assert logs.counts["shard owned"] >= SHARDS * 3
    owners = {(shard, name) for shard, name in group.assignments}
    assert {name for _s, name in owners} == {"a", "b"}
    assert {shard_of(a, SHARDS) for a in ACCOUNTS} == set(range(SHARDS))
    assert len(expected) > 2000
