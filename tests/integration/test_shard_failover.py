"""Scale-out on a real broker: several `ingestor run` processes share 30 accounts' streams
through the shard group; one is killed with SIGKILL and another joins later."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ingestor.shards import shard_of
from ingestor.sim.server import SimServer
from tests.integration.harness import (
    Proc,
    check_exactly_once,
    check_output,
    headers,
    published,
    settle,
    sim_scenario,
    start,
    until,
    wait_published,
    wait_ready,
)

SHARDS = 6
ACCOUNTS = tuple(f"acct_1SimShard{i:02d}" for i in range(30))
SETTINGS = {
    "kafka__shards": str(SHARDS),
    # The broker's group.min.session.timeout.ms is 6 s by default.
    "kafka__session_timeout": "6",
    "kafka__rebalance_timeout": "15",
    "tail__poll_interval": "0.5",
    "alarms__shutdown_grace_seconds": "4",
}


def ownership(p: Proc, *, killed_at: float | None = None) -> dict[int, list[tuple[float, float]]]:
    """(from, to) wall-clock intervals in which `p` owned each shard, from its log lines; an
    interval still open ends at `killed_at` (the process was killed) or now."""
    open_since: dict[int, float] = {}
    out: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for doc in check_output(p):
        event = doc.get("event")
        if event not in ("shard owned", "shard released"):
            continue
        at = datetime.fromisoformat(doc["timestamp"]).timestamp()
        shard = int(doc["shard"])
        if event == "shard owned":
            assert shard not in open_since, f"shard {shard} owned twice by one process"
            open_since[shard] = at
        else:
            out[shard].append((open_since.pop(shard), at))
    end = killed_at if killed_at is not None else time.time()
    for shard, since in open_since.items():
        out[shard].append((since, end))
    return out


def owners_now(p: Proc) -> set[int]:
    owned: set[int] = set()
    for doc in check_output(p):
        if doc.get("event") == "shard owned":
            owned.add(int(doc["shard"]))
        elif doc.get("event") == "shard released":
            owned.discard(int(doc["shard"]))
    return owned


def assert_per_object_order(records: list[Any], truth: list[dict[str, Any]]) -> None:
    """In every Kafka partition each object's events appear in Stripe's order: by created
    time, then by the simulator's serial (the list order of events of one instant)."""
    rank = {t["id"]: (t["created_ms"], t["serial"]) for t in truth}
    last: dict[tuple[str, int, bytes], tuple[int, int]] = {}
    for r in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        k = (r.topic, r.partition, r.key)
        c = rank[headers(r)["event_id"]]
        assert c >= last.get(k, c), f"{r.key!r} out of order in {r.topic}/{r.partition}"
        last[k] = c


async def wait_owned(procs: list[Proc], within: float) -> None:
    """Until the live processes own every shard between them, each exactly once."""

    def settled() -> bool:
        owned = [owners_now(p) for p in procs]
        every = [s for o in owned for s in o]
        return sorted(every) == list(range(SHARDS)) and all(owned)

    await until(settled, within=within, every=0.3)


@pytest.mark.timeout(150)
async def test_three_processes_failover_kill9_and_a_late_joiner_exactly_once(
    bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Three processes share 30 connected accounts (and the platform) over 6 shards while
    events arrive live; one is killed with SIGKILL, a fourth joins later. A read_committed
    consumer then sees every event exactly once, with the right `account` header, in
    per-object order; each shard was owned by exactly one live process at a time (the
    processes' "shard owned"/"shard released" log lines, the killed one's ending at the kill);
    every process owned some shard, and the accounts really spread over the shards."""
    assert len({shard_of(a, SHARDS) for a in ACCOUNTS}) == SHARDS
    scenario = sim_scenario(
        accounts=ACCOUNTS,
        platform_share=0.1,
        history_events=300,
        history_span_seconds=1800.0,
        burst_size=60,
        v2_share=0.2,
        live_rate=20.0,
        live_burst_interval_seconds=3.0,
        events_per_object=4.0,
    )
    args = ("--backfill", "--since", "1h")
    procs: list[Proc] = []
    async with SimServer(scenario, seed=1101) as sim:
        s = sim.sim
        try:
            a, b, c = [
                await start(sim.url, bootstrap, topic_prefix, tmp_path, *args, **SETTINGS)
                for _ in range(3)
            ]
            procs += [a, b, c]
            for p in procs:
                await wait_ready(p, within=45)
            await wait_owned([a, b, c], within=45)
            await asyncio.sleep(2)
            b.proc.send_signal(signal.SIGKILL)
            killed_at = time.time()
            assert await b.wait(10) == -signal.SIGKILL
            # The group notices after the session timeout and gives b's shards to a and c.
            await wait_owned([a, c], within=30)
            d = await start(sim.url, bootstrap, topic_prefix, tmp_path, *args, **SETTINGS)
            procs.append(d)
            await wait_ready(d, within=45)
            await wait_owned([a, c, d], within=45)
            await asyncio.sleep(2)
            s.set_live_rate(0.0, burst_interval_seconds=0.0)
            await settle(s, within=15)
            truth = s.truth()
            await wait_published(bootstrap, topic_prefix, {t["id"] for t in truth}, within=60)
            for p in (a, c, d):
                p.proc.send_signal(signal.SIGTERM)
            for p in (a, c, d):
                assert await p.wait(20) == 0
        finally:
            for p in procs:
                p.kill()
                await p.proc.wait()
    records = await published(bootstrap, topic_prefix)
    check_exactly_once(records, truth, topic_prefix)
    assert_per_object_order(records, truth)
    assert len({t["account"] for t in truth}) == len(ACCOUNTS) + 1

    intervals: dict[int, list[tuple[float, float, str]]] = defaultdict(list)
    for name, p in (("a", a), ("b", b), ("c", c), ("d", d)):
        mine = ownership(p, killed_at=killed_at if p is b else None)
        assert mine, f"process {name} never owned a shard"
        for shard, spans in mine.items():
            intervals[shard] += [(lo, hi, name) for lo, hi in spans]
    assert sorted(intervals) == list(range(SHARDS))
    for shard, owners in intervals.items():
        owners.sort()
        for (_lo1, hi1, n1), (lo2, _hi2, n2) in itertools.pairwise(owners):
            assert lo2 >= hi1, f"shard {shard} owned by {n1} and {n2} at once"
    moved = {shard for shard, owners in intervals.items() if len({o[2] for o in owners}) > 1}
    assert moved, "no shard changed hands"
    print(
        f"\nshard failover: {len(truth)} events over {len(ACCOUNTS) + 1} accounts, "
        f"{len(records)} records, 0 duplicates, 0 lost; "
        f"{sum(len(v) for v in intervals.values())} ownership spans over {SHARDS} shards"
    )
