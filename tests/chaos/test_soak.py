"""A real-broker soak at the default settings: at least 10 minutes of live traffic, kill -9
and SIGTERM restarts, then exactly once and per-object order against ground truth."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import signal
from pathlib import Path

import pytest

from ingestor.sim.scenario import Faults, load_scenario
from ingestor.sim.server import SimServer
from tests.integration.harness import (
    Proc,
    check_exactly_once,
    check_output,
    headers,
    published,
    settle,
    start,
    wait_published,
)
from tests.simulation.world import order_violations

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
SEED = int(os.environ.get("CHAOS_SEED", "20261201"))
LAG_MAX = 300.0
# The service's defaults, written out: `start` shrinks windows for the short tests.
DEFAULTS = {
    "tail__poll_interval": "1.0",
    "tail__overlap_seconds": "5.0",
    "tail__sweep_interval_seconds": "60.0",
    "tail__sweep_window_seconds": "600.0",
}


@pytest.mark.soak
@pytest.mark.timeout(SOAK_SECONDS + 1500)
async def test_a_long_soak_at_default_settings_is_exactly_once_and_in_order(
    bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """~40 events/s (v1 + v2, a connected account, same-second bursts, 5% visible up to 5
    minutes late, a few API faults) for SOAK_SECONDS; the ingestor, at default tail and rate
    settings, is killed with SIGKILL three times and stopped with SIGTERM once, each time
    restarted. Afterwards every event is in Kafka exactly once, and each object's on-time
    events are in Stripe's order in their partition."""
    rng = random.Random(SEED)
    scenario = dataclasses.replace(
        load_scenario(None),
        history_events=2000,
        history_span_seconds=3600.0,
        v2_share=0.15,
        accounts=("acct_1SoakConnected000000",),
        platform_share=0.8,
        live_rate=40.0,
        live_burst_interval_seconds=45.0,
        burst_size=150,
        late_share=0.05,
        lag_min_seconds=6.0,
        lag_max_seconds=LAG_MAX,
        latency_min_ms=50.0,
        latency_max_ms=150.0,
        faults=Faults(error_500=0.005, conflict_409=0.005, reset=0.005, truncate=0.005),
    )
    # Stripe's sandbox limits on both sides: the simulator's defaults, the client's for a test
    # key (`start` raises the client's for the short tests).
    settings = {**DEFAULTS, "stripe__rate_limit": "25", "stripe__endpoint_rate_limit": "25"}
    args = ("--backfill", "--since", "2h")
    stops = sorted(rng.uniform(0.1, 0.9) * SOAK_SECONDS for _ in range(4))
    async with SimServer(scenario, seed=SEED) as sim:
        s = sim.sim
        procs: list[Proc] = []
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            p = await start(sim.url, bootstrap, topic_prefix, tmp_path, *args, **settings)
            procs.append(p)
            for n, at in enumerate(stops):
                await asyncio.sleep(max(0.0, at - (loop.time() - began)))
                assert p.proc.returncode is None, f"run ended by itself: {p.lines()[-5:]}"
                if n == 2:
                    p.proc.send_signal(signal.SIGTERM)
                    assert await p.wait(20) == 0
                else:
                    p.proc.send_signal(signal.SIGKILL)
                    assert await p.wait(10) == -signal.SIGKILL
                p = await start(sim.url, bootstrap, topic_prefix, tmp_path, *args, **settings)
                procs.append(p)
            await asyncio.sleep(max(0.0, SOAK_SECONDS - (loop.time() - began)))
            s.set_live_rate(0.0, burst_interval_seconds=0.0)

            await settle(s, within=LAG_MAX + 30, every=1.0)
            truth = s.truth()
            # A late event is found by the next sweep (every minute, under its budget share).
            await wait_published(bootstrap, topic_prefix, {t["id"] for t in truth}, within=600)
            p.proc.send_signal(signal.SIGTERM)
            assert await p.wait(20) == 0
            check_output(p)
        finally:
            for q in procs:
                q.kill()
                await q.proc.wait()
        records = await published(bootstrap, topic_prefix)
        check_exactly_once(records, truth, topic_prefix)
        records.sort(key=lambda r: (r.topic, r.partition, r.offset))
        bad = order_violations(
            ((r.topic, r.partition, r.key, headers(r)["event_id"]) for r in records),
            s,
            int(float(DEFAULTS["tail__overlap_seconds"]) * 1000),
        )
    assert not bad, f"{len(bad)} out of order, e.g. {bad[:3]}"
    print(
        f"\nsoak (seed {SEED}): {SOAK_SECONDS:.0f} s at defaults, {len(truth)} events, "
        f"3 kill -9 and 1 SIGTERM restarts, 0 lost, 0 duplicated, 0 out of order"
    )
