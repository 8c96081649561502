"""The one clock: wall and monotonic time for every module, replaceable for simulated time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar


class Clock(Protocol):
    """Wall time (unix) and monotonic time (seconds, for durations and deadlines)."""

    def wall(self) -> float:
        """Unix time in seconds."""
        ...

    def wall_ms(self) -> int:
        """Unix time in whole milliseconds (rounded down)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards."""
        ...


class SystemClock:
    """The machine's clocks: `time.time` and `time.monotonic`."""

    def wall(self) -> float:
        return time.time()

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    def __repr__(self) -> str:
        return "SystemClock()"


class LoopClock:
    """Time read from an asyncio loop: monotonic is `loop.time()`, wall is
    `epoch_ms + loop.time() * 1000`.

    Under a time-compacting loop (looptime) both advance together, by exactly the simulated
    time slept, so a whole process can run hours of its life in seconds. The loop is the
    running one; code outside it (a worker thread, sync set-up) reads the loop given here or
    the last one seen running. On an ordinary loop, `loop.time()` is the machine's monotonic
    clock, so the wall time is `epoch_ms` plus the machine's uptime: meant for simulation.
    """

    def __init__(self, epoch_ms: int, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.epoch_ms = int(epoch_ms)
        self._loop = loop

    def _loop_time(self) -> float:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if self._loop is None:
                raise RuntimeError(
                    "LoopClock read outside a running event loop before any loop was seen"
                ) from None
            return self._loop.time()
        self._loop = loop
        return loop.time()

    def wall(self) -> float:
        return self.epoch_ms / 1000 + self._loop_time()

    def wall_ms(self) -> int:
        # Through whole microseconds first: loop.time() * 1000 is inexact in binary (0.3 s
        # would floor to 299 ms), and looptime's own resolution is 1 us.
        return self.epoch_ms + round(self._loop_time() * 1_000_000) // 1000

    def monotonic(self) -> float:
        return self._loop_time()

    def __repr__(self) -> str:
        return f"LoopClock(epoch_ms={self.epoch_ms})"


# A plain module global, not a ContextVar: simulated time is one time for the whole process
# (every task and thread sees it), and a ContextVar token cannot be reset from another context,
# which is exactly what pytest-asyncio does between a fixture's set-up and its tear-down.
_current: Clock = SystemClock()


def current() -> Clock:
    """The clock in use."""
    return _current


C = TypeVar("C", bound=Clock)


@contextmanager
def use(clock: C) -> Iterator[C]:
    """Installs `clock` for the block; the previous clock is back afterwards, however it ends."""
    global _current
    previous, _current = _current, clock
    try:
        yield clock
    finally:
        _current = previous


def wall() -> float:
    """Unix time in seconds, from the clock in use."""
    return _current.wall()


def wall_ms() -> int:
    """Unix time in whole milliseconds, from the clock in use."""
    return _current.wall_ms()


def monotonic() -> float:
    """Monotonic seconds, from the clock in use (durations, deadlines, token buckets)."""
    return _current.monotonic()


__all__ = ["Clock", "LoopClock", "SystemClock", "current", "monotonic", "use", "wall", "wall_ms"]
