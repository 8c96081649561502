"""Pure planning of backfill ranges and of Stripe's 30-day retention (no I/O, no clock)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ingestor.state import BackfillProgress

RETENTION_MS = 30 * 86400 * 1000
# Keep clear of the exact 30-day edge: a request built at the edge can age out in flight.
RETENTION_MARGIN_MS = 5 * 60 * 1000


def retention_edge(now_ms: int) -> int:
    """The oldest created time that is safe to ask Stripe for at `now_ms`."""
    return now_ms - RETENTION_MS + RETENTION_MARGIN_MS


def retention_floor(now_ms: int, granularity_ms: int) -> int:
    """`retention_edge` rounded up to the stream's unit of `created`."""
    edge = retention_edge(now_ms)
    return edge - edge % granularity_ms + granularity_ms


def lost_window(read_through_ms: int, now_ms: int) -> tuple[int, int] | None:
    """[read through, edge) when a stream (or a backfill cursor) fell behind retention:
    events created there can no longer be listed. None when nothing was lost."""
    edge = retention_edge(now_ms)
    return (read_through_ms, edge) if read_through_ms < edge else None


@dataclass(frozen=True, slots=True)
class BackfillPlan:
    """What to do with a stream's backfill at start.

    `action`: `new` (start `progress`), `extend` (an earlier backfill is done; `progress`
    reads further back), `resume` (continue the stored one), `complete` (nothing to do),
    `none` (the requested start is not before the tail start). `clamped_from` is set when
    the requested start was older than retention and was moved to its edge.
    """

    action: Literal["new", "extend", "resume", "complete", "none"]
    progress: BackfillProgress | None
    clamped_from: int | None = None


def plan_backfill(
    existing: BackfillProgress | None,
    since_ms: int,
    tail_start_ms: int,
    now_ms: int,
    granularity_ms: int,
) -> BackfillPlan:
    """The backfill of [since, tail start), given what an earlier run stored."""
    edge = retention_edge(now_ms)
    clamped: int | None = None
    if since_ms < edge:
        # Asking for exactly 30 days (the default) only loses the safety margin: not a clamp
        # worth a warning.
        if since_ms < now_ms - RETENTION_MS:
            clamped = since_ms
        since_ms = edge
    since_ms -= since_ms % granularity_ms
    if existing is None:
        if since_ms < tail_start_ms:
            return BackfillPlan("new", BackfillProgress(since_ms, tail_start_ms, since_ms), clamped)
        return BackfillPlan("none", None, clamped)
    if existing.complete and since_ms < existing.start_ms:
        # An earlier backfill covered [start, end); extend it further back only.
        progress = BackfillProgress(since_ms, existing.start_ms, since_ms)
        return BackfillPlan("extend", progress, clamped)
    if existing.complete:
        return BackfillPlan("complete", existing, clamped)
    return BackfillPlan("resume", existing, clamped)


def read_through(
    read_through_ms: int | None,
    watermark_ms: int | None,
    tail_start_ms: int | None,
    backfilling: bool,
) -> int | None:
    """The time a stream is read through, for alarms. Heads written before it was kept
    fall back to the watermark (or, while a backfill owns the history, the tail start)."""
    if read_through_ms is not None:
        return read_through_ms
    return tail_start_ms if backfilling else watermark_ms
