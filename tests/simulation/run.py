"""Runs simulation seeds from the command line: `python -m tests.simulation.run --seed N`
replays one; `--seeds N` runs N seeds from `--first` and prints the totals."""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import sys
from collections.abc import Iterable

import looptime

from tests.simulation.world import NOOP_CYCLES, Plan, Report, make_plan, run_plan


def _run(seed: int, *, hours: float, rate: float | None, max_rate: float | None) -> Report:
    return run_in_new_loop(make_plan(seed, hours=hours, rate=rate, max_rate=max_rate))


def run_in_new_loop(plan: Plan) -> Report:
    """Plays `plan` in a fresh fast-forwarded loop whose time starts at 0, as every seed does."""
    loop = looptime.new_event_loop(start=0.0, noop_cycles=NOOP_CYCLES)
    try:
        return loop.run_until_complete(run_plan(plan))
    except Exception as exc:  # a crash of the harness or the service is a failed seed too
        report = Report(plan)
        report.false_alarms.append(f"run raised {exc!r}")
        return report
    finally:
        loop.close()


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.simulation.run")
    parser.add_argument("--seed", type=int, help="replay this one seed")
    parser.add_argument("--seeds", type=int, default=1, help="how many seeds from --first")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--hours", type=float, default=1.0, help="simulated hours per seed")
    parser.add_argument("--rate", type=float, default=None, help="events/s (default: drawn)")
    parser.add_argument("--max-rate", type=float, default=None, help="cap on the drawn rate")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.seeds)
    counted = ("seeds", "hours", "events", "crashes", "stops", "outages")
    connect = ("connects", "joined_events", "revokes", "restores", "while_revoked")
    totals = dict.fromkeys((*counted, *connect), 0.0)
    bad = {"lost": 0, "duplicated": 0, "out_of_order": 0}
    failed: list[int] = []
    run = functools.partial(_run, hours=args.hours, rate=args.rate, max_rate=args.max_rate)
    # One line per seed as it finishes, in seed order. (No max_tasks_per_child: on 3.11 a pool
    # that replaces its workers can hang for good once the first one retires.)
    with contextlib.ExitStack() as stack:
        if args.jobs > 1:
            pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(args.jobs))
            reports: Iterable[Report] = pool.map(run, seeds)
        else:
            reports = map(run, seeds)
        for report in reports:
            seed = report.plan.seed
            print(report.summary() if report.ok else report.failure(), flush=True)
            totals["seeds"] += 1
            totals["hours"] += report.simulated_hours
            totals["events"] += report.events
            totals["crashes"] += report.crashes
            totals["stops"] += report.stops
            totals["outages"] += report.outages
            for name in connect:
                totals[name] += getattr(report, name)
            for name in bad:
                bad[name] += len(getattr(report, name))
            if not report.ok:
                failed.append(seed)
    print(
        f"total: {totals['seeds']:.0f} seeds, {totals['hours']:.1f} simulated hours, "
        f"{totals['events']:.0f} events checked, {totals['crashes']:.0f} crashes, "
        f"{totals['stops']:.0f} stops, {totals['outages']:.0f} outages, "
        f"{totals['connects']:.0f} connects ({totals['joined_events']:.0f} of their events), "
        f"{totals['revokes']:.0f} revokes ({totals['restores']:.0f} restored, "
        f"{totals['while_revoked']:.0f} events made while revoked caught up); "
        f"lost {bad['lost']}, duplicated "
        f"{bad['duplicated']}, out of order {bad['out_of_order']}; failed seeds {failed}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
