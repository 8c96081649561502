"""Fault and limit decisions: which failure (if any) a request gets, and Stripe's limiters."""

from __future__ import annotations

import random

from aiolimiter import AsyncLimiter

from ingestor.sim.scenario import Faults

FAULT_NAMES = ("error_500", "error_503_html", "conflict_409", "reset", "truncate", "stall")


def choose_fault(faults: Faults, rng: random.Random) -> str | None:
    """One draw per request: each fault with its probability, no fault otherwise."""
    if faults.total() <= 0:
        return None
    x = rng.random()
    for name in FAULT_NAMES:
        p: float = getattr(faults, name)
        if x < p:
            return name
        x -= p
    return None


class Limiters:
    """Stripe's limiters as the simulator enforces them, per operation (`GET /v1/events`):
    a global and a per-operation rate, each a leaky bucket holding one second's worth of
    requests (aiolimiter's), and global and per-operation caps on requests in flight.

    `admit` answers None (go ahead) or the `Stripe-Rate-Limited-Reason` to refuse with; a
    refused request takes nothing from any limiter. An admitted one holds its concurrency
    slots until `release`. A limit <= 0 is no limit.
    """

    def __init__(self) -> None:
        self._rates: dict[str, tuple[float, AsyncLimiter]] = {}
        self._in_flight: dict[str, int] = {}
        self._total = 0

    def _bucket(self, key: str, rate: float) -> AsyncLimiter:
        held = self._rates.get(key)
        if held is None or held[0] != rate:
            # A changed limit starts a fresh, full bucket, as a new limit at Stripe would.
            held = (rate, AsyncLimiter(max(rate, 1.0), 1.0))
            self._rates[key] = held
        return held[1]

    async def admit(
        self,
        operation: str,
        *,
        rate: float,
        endpoint_rate: float,
        concurrency: int,
        endpoint_concurrency: int,
    ) -> str | None:
        if concurrency > 0 and self._total >= concurrency:
            return "global-concurrency"
        if endpoint_concurrency > 0 and self._in_flight.get(operation, 0) >= endpoint_concurrency:
            return "endpoint-concurrency"
        glob = self._bucket("", rate) if rate > 0 else None
        endpoint = self._bucket(operation, endpoint_rate) if endpoint_rate > 0 else None
        if glob is not None and not glob.has_capacity():
            return "global-rate"
        if endpoint is not None and not endpoint.has_capacity():
            return "endpoint-rate"
        # Both have capacity, so neither acquire waits.
        if glob is not None:
            await glob.acquire()
        if endpoint is not None:
            await endpoint.acquire()
        self._total += 1
        self._in_flight[operation] = self._in_flight.get(operation, 0) + 1
        return None

    def release(self, operation: str) -> None:
        self._total -= 1
        self._in_flight[operation] -= 1

    @property
    def in_flight(self) -> int:
        return self._total
