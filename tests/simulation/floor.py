"""Measures what bounds a seed's speed from below: plays one plan, keeps every answer the
service read, then times decoding them alone (`python -m tests.simulation.floor --seed N`).

The figure it gives: the wall time of the simulated day beside the time `orjson.loads` alone
takes for that day's answers, the least any client must spend on them. Both are extrapolated
per simulated day from the run's own simulated hours (issue #9's target is a day at 50
events/s in 30 s).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import looptime
import orjson
from aiohttp import web

from ingestor.sim.inprocess import InProcessTransport
from ingestor.sim.simulator import Simulator
from ingestor.transport import HttpResponse
from tests.simulation.world import DAY, HOUR, NOOP_CYCLES, Plan, Report, make_plan, run_plan

DECODE_ROUNDS = 3  # the least of three, so a moment's interference is not counted


def kind_of(url: str) -> str:
    """The answer's class: the two event lists, or a related-object retrieve."""
    path = url.split("?", 1)[0]
    if path.endswith("/v1/events"):
        return "v1 list"
    if path.endswith("/v2/core/events"):
        return "v2 list"
    return "retrieve"


class RecordingTransport(InProcessTransport):
    """The in-process transport, keeping each answer's body by its class."""

    def __init__(self, app: web.Application) -> None:
        super().__init__(app)
        self.bodies: dict[str, list[bytes]] = {}

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        data: Mapping[str, str] | None,
        *,
        total_seconds: float,
        stall_seconds: float,
    ) -> HttpResponse:
        answer = await super().send(
            method, url, headers, data, total_seconds=total_seconds, stall_seconds=stall_seconds
        )
        self.bodies.setdefault(kind_of(url), []).append(answer.body)
        return answer


@dataclass(slots=True)
class Floor:
    report: Report
    answers: Counter[str] = field(default_factory=Counter)
    megabytes: dict[str, float] = field(default_factory=dict)
    listed: int = 0  # events in the list pages (each poll and sweep re-reads some)
    decode_seconds: float = 0.0

    def per_day(self, seconds: float) -> float:
        return seconds * DAY / (self.report.simulated_hours * HOUR)

    def lines(self) -> list[str]:
        r = self.report
        rows = ", ".join(
            f"{kind} {self.answers[kind]:,} ({self.megabytes[kind]:.1f} MB)"
            for kind in sorted(self.answers)
        )
        return [
            r.summary(),
            f"answers: {rows}; {self.listed:,} events listed for {r.events:,} published "
            f"({self.listed / max(r.events, 1):.1f} listings each)",
            f"orjson.loads of those answers alone: {self.decode_seconds:.2f} s "
            f"(least of {DECODE_ROUNDS})",
            f"per simulated day: wall {self.per_day(r.wall_seconds):,.0f} s, decoding alone "
            f"{self.per_day(self.decode_seconds):,.1f} s: wall is "
            f"{r.wall_seconds / max(self.decode_seconds, 1e-9):.0f} x the decoding floor",
        ]


def measure(plan: Plan) -> Floor:
    """Plays `plan` in a fresh loop with a recording transport, then times decoding alone."""
    recorders: list[RecordingTransport] = []

    def make_transport(sim: Simulator) -> InProcessTransport:
        recorders.append(RecordingTransport.for_simulator(sim))
        return recorders[-1]

    loop = looptime.new_event_loop(start=0.0, noop_cycles=NOOP_CYCLES)
    try:
        report = loop.run_until_complete(run_plan(plan, make_transport=make_transport))
    finally:
        loop.close()
    floor = Floor(report)
    bodies: list[bytes] = []
    for recorder in recorders:
        for kind, kept in recorder.bodies.items():
            floor.answers[kind] += len(kept)
            floor.megabytes[kind] = floor.megabytes.get(kind, 0.0) + sum(map(len, kept)) / 1e6
            bodies += kept
            if kind != "retrieve":
                for body in kept:
                    page = orjson.loads(body)
                    if isinstance(page, dict):
                        floor.listed += len(page.get("data") or ())
    rounds = []
    for _ in range(DECODE_ROUNDS):
        start = time.perf_counter()
        for body in bodies:
            orjson.loads(body)
        rounds.append(time.perf_counter() - start)
    floor.decode_seconds = min(rounds)
    return floor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.simulation.floor")
    parser.add_argument("--seed", type=int, default=303)
    parser.add_argument("--hours", type=float, default=0.25)
    parser.add_argument("--rate", type=float, default=50.0)
    args = parser.parse_args(argv)
    floor = measure(make_plan(args.seed, hours=args.hours, rate=args.rate))
    print("\n".join(floor.lines()))
    return 0 if floor.report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
