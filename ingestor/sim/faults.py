"""Fault and rate-limit decisions: which failure (if any) a request gets, and the token bucket."""

from __future__ import annotations

import random

from ingestor.clock import monotonic
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


class RateLimiter:
    """A token bucket holding one second's worth of requests (Stripe's limits are per second)."""

    def __init__(self) -> None:
        self._clock = monotonic
        self._tokens = 0.0
        self._last = self._clock()
        self._rate = 0.0

    def allow(self, rate: float) -> bool:
        """False when over `rate` requests/s; rate <= 0 means unlimited."""
        if rate <= 0:
            return True
        now = self._clock()
        if rate != self._rate:
            self._rate, self._tokens = rate, max(rate, 1.0)
        self._tokens = min(max(rate, 1.0), self._tokens + (now - self._last) * rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
