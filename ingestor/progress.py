"""Backfill progress: a one-line bar on a terminal, structured log lines and gauges otherwise.

Each backfilling stream runs a `ProgressReporter`. On a TTY (stderr is a terminal)
all of them share one redrawn line on stderr with the figures summed over the streams: the
share of the time range handed to the committer (oldest first, so a prefix), events read,
events/s, slices done/total and an ETA.
Without a terminal each reporter logs a `backfill progress` line every `every` seconds with
the same figures. Either way the `ingestor_backfill_progress_ratio` and
`ingestor_backfill_slices{state}` gauges follow the sum over the streams.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import structlog

from ingestor import metrics
from ingestor.clock import monotonic

log = structlog.get_logger(__name__)

BAR_WIDTH = 24
# A terminal line is redrawn this often; log lines come every `every` seconds.
REFRESH_SECONDS = 0.5


class _Stats(Protocol):
    @property
    def events(self) -> int: ...

    @property
    def slices_done(self) -> int: ...


class _Plan(Protocol):
    @property
    def slices(self) -> list[Any]: ...


class Watched(Protocol):
    """What a reporter reads of a running backfill (a `Backfiller`)."""

    @property
    def stats(self) -> _Stats: ...

    @property
    def plan(self) -> _Plan: ...


@dataclass(frozen=True, slots=True)
class Figures:
    """One reading of progress; `ratio` is the share of the time range handed to the committer."""

    events: int
    events_per_s: float
    slices_done: int
    slices_total: int
    ratio: float
    eta_s: float | None

    def fields(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "events_per_s": round(self.events_per_s, 1),
            "slices_done": self.slices_done,
            "slices_total": self.slices_total,
            "progress": round(self.ratio, 4),
            "eta_s": None if self.eta_s is None else round(self.eta_s),
        }


def format_duration(seconds: float | None) -> str:
    """`1h02m`, `3m05s`, `42s`; `?` while unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def render_bar(f: Figures, width: int = BAR_WIDTH) -> str:
    """One terminal line, e.g.
    `backfill [#########...............]  37.5%  120,000 events  8,012/s  slices 12/30  ETA 1m20s`.
    """
    filled = min(width, int(f.ratio * width))
    bar = "#" * filled + "." * (width - filled)
    return (
        f"backfill [{bar}] {f.ratio * 100:5.1f}%  {f.events:,} events  "
        f"{f.events_per_s:,.0f}/s  slices {f.slices_done}/{f.slices_total}  "
        f"ETA {format_duration(f.eta_s)}"
    )


class _Reading:
    """The latest figures of one stream, with what the ETA needs."""

    def __init__(self, started: float, ratio: float) -> None:
        self.started = started
        self.ratio0 = ratio
        self.span_ms = 1
        self.figures = Figures(0, 0.0, 0, 0, ratio, None)


class _Board:
    """Readings of every active reporter, summed into one set of figures and gauges."""

    def __init__(self) -> None:
        self.readings: dict[int, _Reading] = {}
        self.drawn = False

    def total(self, now: float) -> Figures:
        rs = list(self.readings.values())
        if not rs:
            return Figures(0, 0.0, 0, 0, 1.0, 0.0)
        span = sum(r.span_ms for r in rs)
        ratio = sum(r.figures.ratio * r.span_ms for r in rs) / max(1, span)
        ratio0 = sum(r.ratio0 * r.span_ms for r in rs) / max(1, span)
        elapsed = now - min(r.started for r in rs)
        return Figures(
            events=sum(r.figures.events for r in rs),
            events_per_s=sum(r.figures.events_per_s for r in rs),
            slices_done=sum(r.figures.slices_done for r in rs),
            slices_total=sum(r.figures.slices_total for r in rs),
            ratio=ratio,
            eta_s=_eta(ratio0, ratio, elapsed),
        )

    def publish(self, now: float) -> Figures:
        f = self.total(now)
        metrics.BACKFILL_PROGRESS.set(f.ratio)
        metrics.BACKFILL_SLICES.labels(state="total").set(f.slices_total)
        metrics.BACKFILL_SLICES.labels(state="done").set(f.slices_done)
        return f


_BOARD = _Board()


def _eta(ratio0: float, ratio: float, elapsed: float) -> float | None:
    """Seconds left at the pace since the start; None until there is a pace to go by."""
    if ratio >= 1.0:
        return 0.0
    gained = ratio - ratio0
    if gained <= 0 or elapsed <= 0:
        return None
    return (1.0 - ratio) * elapsed / gained


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except ValueError:  # a closed stream
        return False


class ProgressReporter:
    """Reports one stream's backfill until cancelled (see the module docstring).

    `start_ms`/`end_ms` is the stream's whole backfill range, so a resumed backfill starts
    at the share it had already committed. Construct it right before the backfill runs.
    """

    def __init__(
        self,
        backfiller: Watched,
        stream_key: str,
        *,
        start_ms: int,
        end_ms: int,
        every: float = 5.0,
        stream: TextIO | None = None,
        tty: bool | None = None,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self._b = backfiller
        self._key = stream_key
        self._start_ms = start_ms
        self._end_ms = max(end_ms, start_ms)
        self._every = every
        self._stream = sys.stderr if stream is None else stream
        self._tty = _is_tty(self._stream) if tty is None else tty
        self._clock = clock
        self._started = clock()
        self._reading = _Reading(self._started, self._ratio())
        self._reading.span_ms = max(1, self._end_ms - self._start_ms)
        self._slices_total0 = len(backfiller.plan.slices)

    def _ratio(self) -> float:
        slices = self._b.plan.slices
        head = slices[0].lo_ms if slices else self._end_ms
        span = self._end_ms - self._start_ms
        return 1.0 if span <= 0 else min(1.0, max(0.0, (head - self._start_ms) / span))

    def figures(self) -> Figures:
        """This stream's figures now."""
        s = self._b.stats
        elapsed = self._clock() - self._started
        ratio = self._ratio()
        return Figures(
            events=s.events,
            events_per_s=s.events / elapsed if elapsed > 0 else 0.0,
            slices_done=s.slices_done,
            slices_total=s.slices_done + len(self._b.plan.slices),
            ratio=ratio,
            eta_s=_eta(self._reading.ratio0, ratio, elapsed),
        )

    def update(self) -> Figures:
        """Takes a reading, updates the gauges and (on a TTY) redraws the line; returns the
        figures summed over every active stream."""
        self._reading.figures = self.figures()
        _BOARD.readings[id(self)] = self._reading
        total = _BOARD.publish(self._clock())
        if self._tty:
            self._draw(render_bar(total))
        return total

    def _draw(self, line: str) -> None:
        try:
            self._stream.write("\r\x1b[2K" + line)
            self._stream.flush()
            _BOARD.drawn = True
        except (OSError, ValueError):
            self._tty = False  # the terminal went away; fall back to log lines

    async def run(self) -> None:
        """Reports until cancelled, then takes a last reading and leaves the board."""
        try:
            last_log = self._clock()
            while True:
                await asyncio.sleep(REFRESH_SECONDS if self._tty else self._every)
                self.update()
                now = self._clock()
                if not self._tty and now - last_log >= self._every - 1e-6:
                    last_log = now
                    log.info("backfill progress", stream=self._key, **self.figures().fields())
        finally:
            self.close()

    def close(self) -> None:
        """Final reading; ends the terminal line once the last stream is done."""
        final = self.update()
        _BOARD.readings.pop(id(self), None)
        if self._tty and not _BOARD.readings and _BOARD.drawn:
            self._draw(render_bar(final))
            try:
                self._stream.write("\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass
            _BOARD.drawn = False


__all__ = ["Figures", "ProgressReporter", "format_duration", "render_bar"]
