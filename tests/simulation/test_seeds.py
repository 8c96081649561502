"""Deterministic simulation at the default settings: seeded scenarios of traffic, crashes,
stops, outages and API faults, each checked against the simulator's ground truth (see
world.py). A failure prints the one command that replays its seed."""

from __future__ import annotations

import asyncio
import dataclasses
import os

import pytest

from tests.simulation.run import make_parser, run_in_new_loop
from tests.simulation.world import (
    CONNECTED,
    LOOPTIME_SYNC_FUTURES,
    NOOP_CYCLES,
    REVOKED,
    SWEEP_WINDOW_S,
    Plan,
    Report,
    Step,
    _LeanWeakSet,
    lean_loop,
    make_plan,
    run_plan,
)

# CI runs 50; `make chaos` runs 1,000 through `python -m tests.simulation.run`.
SEEDS = int(os.environ.get("SIM_SEEDS", "50"))
SEED_HOURS = float(os.environ.get("SIM_HOURS", "0.15"))
# 50 events/s seeds cost about 70 s of CPU per simulated hour (README, "Simulation speed").
SEED_MAX_RATE = float(os.environ.get("SIM_MAX_RATE", "20"))


def quiet(seed: int, hours: float, rate: float, **changes: object) -> Plan:
    values: dict[str, object] = {
        "seed": seed,
        "hours": hours,
        "rate": rate,
        "late_share": 0.05,
        "lag_max": SWEEP_WINDOW_S - 60,
        "v2_share": 0.1,
        "accounts": (),
        "steps": (),
    }
    values.update(changes)
    return Plan(**values)  # type: ignore[arg-type]  # test-only convenience over the fields


@pytest.mark.looptime
async def test_lean_loop_swaps_looptime_s_executor_futures_and_threads_still_run() -> None:
    """`lean_loop` really replaces looptime's executor-future set (if looptime renamed it,
    the speed-up would silently be gone), and a thread started afterwards is still tracked
    and awaited to completion under fast-forwarded time."""
    lean_loop()
    loop = asyncio.get_running_loop()
    assert isinstance(getattr(loop, LOOPTIME_SYNC_FUTURES), _LeanWeakSet)
    assert await asyncio.to_thread(sum, [1, 2, 3]) == 6


def test_the_ci_seeds_cover_every_kind_of_trouble() -> None:
    """The seeds CI runs include each step kind (accounts connecting mid-run, revocations
    restored and never restored, in discovery and configured mode), the cron mode and late
    events, so a mechanism the generator stopped drawing cannot pass unnoticed."""
    plans = [make_plan(seed, hours=SEED_HOURS, max_rate=SEED_MAX_RATE) for seed in range(50)]
    kinds = {s.kind for p in plans for s in p.steps}
    expected = {"crash", "stop", "kill_stop", "outage", "faults", "burst", "same_second"}
    assert expected | {"connect", "revoke", "restore"} <= kinds
    revoked = [p for p in plans if any(s.kind == "revoke" for s in p.steps)]
    assert {(p.discover, p.restored) for p in revoked} == {
        (True, True),
        (True, False),
        (False, True),
        (False, False),
    }
    assert any(p.v2_share > 0 for p in plans if any(s.kind == "connect" for s in p.steps))
    assert any(p.cron_seconds for p in plans)
    assert any(p.late_share > 0 for p in plans)
    stops = [s.seconds for p in plans for s in p.steps if s.kind.endswith("stop")]
    assert max(stops) > 6 * 3600
    assert any(s > SWEEP_WINDOW_S for s in stops)


def test_a_failing_seed_prints_the_command_that_draws_its_plan_again() -> None:
    """The replay line of a failure names every argument the plan was drawn with: a CI seed
    is drawn under a rate cap that changes every later draw, so a command without it would
    replay another plan."""
    for seed, rate in ((7, None), (8, None), (9, None), (12, 5.0)):
        plan = make_plan(seed, hours=SEED_HOURS, rate=rate, max_rate=SEED_MAX_RATE)
        line = Report(plan).failure().splitlines()[-1]
        prefix = "replay: python -m tests.simulation.run "
        assert line.startswith(prefix)
        args = make_parser().parse_args(line.removeprefix(prefix).split())
        again = make_plan(args.seed, hours=args.hours, rate=args.rate, max_rate=args.max_rate)
        assert again == plan
    assert make_plan(7, hours=SEED_HOURS) != make_plan(7, hours=SEED_HOURS, max_rate=20)


# A seed takes 2-30 s of wall time on an idle 2-core machine; the default 120 s per test is
# too tight on a loaded one.
@pytest.mark.timeout(600)
@pytest.mark.looptime(noop_cycles=NOOP_CYCLES)
@pytest.mark.parametrize("seed", range(SEEDS))
async def test_a_seeded_scenario_keeps_every_invariant(seed: int) -> None:
    """Every visible event exactly once, per-object order (but for events later than the
    overlap), bounded state and no false alarm, whatever the seed throws at the service."""
    report = await run_plan(make_plan(seed, hours=SEED_HOURS, max_rate=SEED_MAX_RATE))
    assert report.ok, report.failure()
    assert report.events > 0


def test_a_replayed_plan_makes_the_same_requests() -> None:
    """A seed replays exactly: the retry jitter under API faults draws from a generator the
    run seeds, so two runs of one plan send the same requests and publish the same records
    (seed 452 once replayed with 14,184 and then 14,192 requests)."""
    steps = (Step(60.0, "faults", seconds=120.0), Step(120.0, "crash"))
    runs = [run_in_new_loop(quiet(110, 0.06, 5.0, steps=steps)) for _ in range(2)]
    for r in runs:
        assert r.ok, r.failure()
    assert runs[0].requests > 0
    assert [(r.requests, r.published, r.exit_codes) for r in runs] == [
        (runs[0].requests, runs[0].published, runs[0].exit_codes)
    ] * 2


@pytest.mark.timeout(600)
@pytest.mark.looptime(noop_cycles=NOOP_CYCLES)
async def test_an_hour_of_live_tail_at_defaults_publishes_nothing_twice() -> None:
    """Finding 1: sweeps of the 10-minute window at 40 events/s take longer than the overlap
    under their 10% budget; the seen window is pruned against the oldest read still running,
    so nothing they re-read is published again."""
    report = await run_plan(quiet(101, 1.0, 40.0))
    assert report.ok, report.failure()
    assert report.events > 140_000


@pytest.mark.timeout(600)
@pytest.mark.looptime(noop_cycles=NOOP_CYCLES)
async def test_once_every_15_minutes_loses_no_late_event() -> None:
    """Finding 2: the advertised cron use. Each run sweeps from where the last one left its
    bound, so events created before a stop longer than the sweep window and visible after it
    are published, exactly once."""
    report = await run_plan(quiet(104, 2.0, 10.0, late_share=0.1, cron_seconds=900.0))
    assert report.ok, report.failure()
    assert report.stops == 8


@pytest.mark.timeout(600)
@pytest.mark.looptime(noop_cycles=NOOP_CYCLES)
async def test_stops_longer_than_the_sweep_window_lose_nothing() -> None:
    """Finding 2, long-running service: graceful and kill -9 stops of 15 minutes and 2 days,
    with late events up to nine minutes, lose and duplicate nothing."""
    steps = (
        Step(600.0, "stop", seconds=900.0),
        Step(2400.0, "kill_stop", seconds=2 * 86400.0),
        Step(3000.0, "crash"),
    )
    report = await run_plan(quiet(105, 1.0, 10.0, late_share=0.1, steps=steps))
    assert report.ok, report.failure()
    assert report.simulated_hours > 48


@pytest.mark.timeout(600)
@pytest.mark.looptime(noop_cycles=NOOP_CYCLES)
async def test_a_stop_during_the_restart_sweep_leaves_it_owed_to_the_next_run() -> None:
    """Seed 452: after a kill -9 and a stop of an hour, the process was stopped again 20 s in,
    its restart sweep (slowed by API faults) unfinished but its catch-up an hour on. The late
    events of the first stop were lost: the next run's sweep reached back only twice the
    window from the new watermark. The owed range is kept in the state until swept."""
    steps = (
        Step(300.0, "kill_stop", seconds=300.0),
        Step(301.0, "stop", seconds=3600.0),
        Step(302.0, "faults", seconds=300.0),
    )
    # The plan's end (after which the service is stopped) falls 20 s after the last start.
    report = await run_plan(quiet(109, (600 + 3600 + 20) / 3600, 5.0, late_share=0.1, steps=steps))
    assert report.ok, report.failure()
    assert report.stops == 2


@pytest.mark.timeout(600)
@pytest.mark.looptime(noop_cycles=NOOP_CYCLES)
async def test_same_second_runs_on_one_object_keep_stripe_order() -> None:
    """Finding 3: runs of events on one object within one second reach its partition in
    Stripe's order in the tail, through crashes between them."""
    steps = tuple(
        Step(60.0 * i, "same_second" if i % 3 else "crash", count=6) for i in range(1, 30)
    )
    report = await run_plan(quiet(106, 0.6, 5.0, late_share=0.0, steps=steps))
    assert report.ok, report.failure()


@pytest.mark.timeout(600)
@pytest.mark.looptime(noop_cycles=NOOP_CYCLES)
@pytest.mark.parametrize("restored", [False, True], ids=["never-restored", "restored"])
async def test_a_process_started_after_a_revocation_parks_the_account(restored: bool) -> None:
    """Finding 4 (seeds 7 and 8): with `accounts = all`, a process started after a
    connected account's access was revoked (a crash restart, the final `--once`) found it
    missing from the listing and dropped its streams without a word. They are parked from
    the state topic: a /readyz detail, `--once` exits 1; and when access comes back the
    listing wakes them, so every event made while revoked is read, exactly once."""
    steps = [Step(400.0, "revoke"), Step(450.0, "crash")]
    if restored:
        steps.append(Step(500.0, "restore"))
    plan = quiet(
        107,
        0.2,
        5.0,
        v2_share=0.3,
        accounts=(CONNECTED, REVOKED),
        discover=True,
        steps=tuple(steps),
    )
    report = await run_plan(plan)
    assert report.ok, report.failure()
    assert report.revokes == 1
    assert report.restores == (1 if restored else 0)
    assert report.exit_codes[-1] == (0 if restored else 1)
    assert (report.while_revoked > 0) == restored


@pytest.mark.timeout(600)
@pytest.mark.looptime(noop_cycles=NOOP_CYCLES)
async def test_accounts_connected_mid_run_through_crashes_are_read_from_their_connection() -> None:
    """Accounts that connect mid-run, one with its authorization visible 30 s late and one
    just before a crash (so the restarted process finds it at its first scan), have every
    event since their connection published exactly once, v1 and v2."""
    steps = (
        Step(60.0, "connect", seconds=30.0, count=0),
        Step(200.0, "connect", seconds=0.0, count=1),
        Step(202.0, "crash"),
        Step(300.0, "outage", seconds=30.0),
    )
    plan = quiet(108, 0.15, 10.0, v2_share=0.3, discover=True, steps=steps)
    report = await run_plan(plan)
    assert report.ok, report.failure()
    assert report.connects == 2
    assert report.joined_events > 100


@pytest.mark.timeout(600)
@pytest.mark.looptime(noop_cycles=NOOP_CYCLES)
async def test_a_busy_tail_read_by_anchored_walks_keeps_every_invariant() -> None:
    """At 200 events/s every poll is busy (a dozen pages): each second of its overlap is
    re-read by parallel walks from the ids the last poll listed (`anchors.chains`), through
    same-second runs on one object, a burst, late events and a crash: still exactly once, in
    Stripe's order, bounded."""
    steps = (
        Step(120.0, "same_second", count=6),
        Step(160.0, "crash"),
        Step(200.0, "same_second", count=8),
        Step(230.0, "burst", count=400),
    )
    report = await run_plan(quiet(113, 0.08, 200.0, steps=steps))
    assert report.ok, report.failure()
    assert report.events > 150_000


@pytest.mark.timeout(600)
@pytest.mark.looptime(noop_cycles=NOOP_CYCLES)
async def test_thin_events_at_a_third_of_50_per_second_keep_up_and_lose_no_late_event() -> None:
    """Seed 303's first 0.7 h (50 events/s, 30% thin, 2% late up to 9 minutes): hydration at
    half the sandbox budget could not keep up with 15 thin events/s, the v2 polls lagged the
    clock by minutes, and each sweep was cut at twice the window below the poll window while
    its bound moved past the cut: 165 late events lost, no crash needed (1,539 in 24 h).
    Hydration now has 80% and a sweep starts at its bound however far the polls lag."""
    full = make_plan(303, hours=24, rate=50)
    hours = 0.7
    steps = tuple(s for s in full.steps if s.at < hours * 3600 - 120)
    plan = dataclasses.replace(full, hours=hours, steps=steps, replay="")
    assert [s.kind for s in plan.steps] == ["same_second"]
    report = await run_plan(plan)
    assert report.ok, report.failure()
    assert report.events > 150_000


@pytest.mark.timeout(600)
@pytest.mark.looptime(noop_cycles=NOOP_CYCLES)
async def test_crashes_every_few_minutes_after_an_hours_stop_keep_the_state_bounded() -> None:
    """Seed 300 for 2 h at 50 events/s (three accounts, two joining mid-run): a 53-minute
    stop, then six crashes within half an hour. Each crash cut the restart sweep short and
    the next restart owed all of it again, the state kept every id from before the stop on
    (221,000, over the bound of 109,000), and the cut at twice the window lost 116 late
    events. Sweeps record what each window-long span settled and the seen window forgets
    the settled stretch between the owed ranges and the sweep bound."""
    report = await run_plan(make_plan(300, hours=2, rate=50))
    assert report.ok, report.failure()
    assert report.crashes == 6
    assert report.max_state_ids < 109_000
