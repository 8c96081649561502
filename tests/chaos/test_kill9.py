"""kill -9 at random moments while the ingestor tails a busy simulator: still exactly once."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
from pathlib import Path

import pytest

from ingestor.sim.scenario import Faults
from ingestor.sim.server import SimServer
from tests.integration.harness import (
    Proc,
    check_exactly_once,
    check_output,
    published,
    settle,
    sim_scenario,
    start,
    wait_published,
    wait_ready,
)
from tests.integration.kafka_util import read_all

# The kill moments are seeded; CHAOS_SEED=N replays or varies them.
SEED = int(os.environ.get("CHAOS_SEED", "20261126"))
KILLS = 8


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_kill9_at_random_moments_loses_and_duplicates_nothing(
    bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """A live simulator (~150 events/s, v1 + v2, connected accounts, 10% visible 1-5 s late,
    same-second bursts, a few API faults); the ingestor runs as a process and is killed with
    SIGKILL at seeded random moments (during restore, backfill, polls and commits) and
    restarted each time. After live traffic stops, the last run catches up and is stopped with
    SIGTERM: a read_committed consumer sees every ground-truth event exactly once."""
    rng = random.Random(SEED)
    # The simulator at the same raised limits as the client (`start`): this test is about
    # kills, not 429s.
    scenario = sim_scenario(
        history_events=400,
        history_span_seconds=1800.0,
        history_bursts=1,
        burst_size=150,
        v2_share=0.15,
        live_rate=150.0,
        live_burst_interval_seconds=4.0,
        late_share=0.1,
        lag_min_seconds=1.0,
        lag_max_seconds=5.0,
        faults=Faults(error_500=0.01, conflict_409=0.01, reset=0.01),
    )
    settings = {
        "tail__overlap_seconds": "1",
        "tail__sweep_interval_seconds": "1.5",
        "tail__sweep_window_seconds": "45",
        "stripe__backoff_base": "0.05",
        "stripe__backoff_max": "1",
    }
    args = ("--backfill", "--since", "1h")
    kills: list[float] = []
    async with SimServer(scenario, seed=SEED) as sim:
        s = sim.sim
        procs: list[Proc] = []
        try:
            for n in range(KILLS):
                p = await start(sim.url, bootstrap, topic_prefix, tmp_path, *args, **settings)
                procs.append(p)
                if n % 2:
                    # Once it is serving (polls and commits in flight) ...
                    await wait_ready(p)
                    delay = rng.uniform(0.0, 2.0)
                else:
                    # ... or anywhere from interpreter start through restore and backfill.
                    delay = rng.uniform(0.5, 5.0)
                await asyncio.sleep(delay)
                assert p.proc.returncode is None, f"run ended by itself: {p.lines()[-5:]}"
                p.proc.send_signal(signal.SIGKILL)
                assert await p.wait(10) == -signal.SIGKILL
                kills.append(round(delay, 2))

            last = await start(sim.url, bootstrap, topic_prefix, tmp_path, *args, **settings)
            procs.append(last)
            await asyncio.sleep(3)
            s.set_faults(live_rate=0.0)
            s.set_live_rate(0.0, burst_interval_seconds=0.0)

            # Late events still pending become visible within lag_max_seconds.
            await settle(s, within=15)
            truth = s.truth()
            await wait_published(bootstrap, topic_prefix, {t["id"] for t in truth}, within=120)
            last.proc.send_signal(signal.SIGTERM)
            assert await last.wait(10) == 0
            check_output(last)
        finally:
            for p in procs:
                p.kill()
                await p.proc.wait()
        assert len(s.truth()) == len(truth)
    records = await published(bootstrap, topic_prefix)
    check_exactly_once(records, truth, topic_prefix)
    # How many records the kills left in aborted transactions (written, never visible).
    pattern = re.escape(topic_prefix) + r"\.(?!_ingestor_state).*"
    written = await read_all(bootstrap, pattern, within=60, isolation_level="read_uncommitted")
    apis = {t["api"] for t in truth}
    accounts = {t["account"] for t in truth}
    assert apis == {"v1", "v2"}
    assert len(accounts) == 3
    assert len(kills) == KILLS
    print(
        f"\nkill -9 chaos (seed {SEED}): {len(truth)} events, {len(kills)} kills at {kills} s "
        "into runs (odd ones: after ready), "
        f"{len(records)} records, 0 duplicates, 0 lost; "
        f"{len(written) - len(records)} records of aborted transactions hidden"
    )
