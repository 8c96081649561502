"""Backfill and retention planning: pure decisions on ranges, clamps and lost windows."""

from __future__ import annotations

from ingestor.plan import (
    RETENTION_MARGIN_MS,
    RETENTION_MS,
    lost_window,
    plan_backfill,
    read_through,
    retention_edge,
)
from ingestor.state import BackfillProgress

NOW = 2_000_000_000_000
DAY = 86_400_000


def test_a_stream_read_through_recently_lost_nothing_however_old_its_newest_event() -> None:
    """Finding 4: the window is judged from the read-through time, so a quiet stream whose
    newest event is 40 days old is fine, and one not read for 31 days lost [read, edge)."""
    assert read_through(NOW - DAY, NOW - 40 * DAY, NOW - 50 * DAY, False) == NOW - DAY
    assert lost_window(NOW - DAY, NOW) is None
    assert lost_window(NOW - 31 * DAY, NOW) == (NOW - 31 * DAY, retention_edge(NOW))
    assert retention_edge(NOW) == NOW - RETENTION_MS + RETENTION_MARGIN_MS


def test_heads_without_a_read_through_fall_back_to_the_watermark_or_the_tail_start() -> None:
    """Heads written before the read-through time existed: the watermark, or the tail start
    while a backfill owns the history."""
    assert read_through(None, NOW - 3 * DAY, NOW - DAY, False) == NOW - 3 * DAY
    assert read_through(None, NOW - 3 * DAY, NOW - DAY, True) == NOW - DAY
    assert read_through(None, None, None, False) is None


def test_a_new_backfill_covers_since_to_the_tail_start_clamped_to_retention() -> None:
    """A start older than 30 days is moved to the edge and reported; exactly 30 days is not
    a clamp worth a warning."""
    p = plan_backfill(None, NOW - 45 * DAY, NOW - 600_000, NOW, 1000)
    assert p.action == "new"
    assert p.clamped_from == NOW - 45 * DAY
    assert p.progress is not None
    edge = retention_edge(NOW)
    assert p.progress.start_ms == edge - edge % 1000 == p.progress.cursor_ms
    assert p.progress.end_ms == NOW - 600_000
    assert plan_backfill(None, NOW - 30 * DAY, NOW, NOW, 1000).clamped_from is None


def test_a_done_backfill_extends_only_further_back_and_an_unfinished_one_resumes() -> None:
    """Re-running --backfill never re-reads what a finished backfill covered."""
    done = BackfillProgress(NOW - 7 * DAY, NOW - DAY, NOW - DAY)
    p = plan_backfill(done, NOW - 10 * DAY, NOW - DAY, NOW, 1)
    assert p.action == "extend"
    assert p.progress == BackfillProgress(NOW - 10 * DAY, NOW - 7 * DAY, NOW - 10 * DAY)
    assert plan_backfill(done, NOW - 5 * DAY, NOW - DAY, NOW, 1).action == "complete"
    half = BackfillProgress(NOW - 7 * DAY, NOW - DAY, NOW - 3 * DAY)
    assert plan_backfill(half, NOW - 7 * DAY, NOW - DAY, NOW, 1).action == "resume"
    assert plan_backfill(None, NOW, NOW - DAY, NOW, 1).action == "none"
