"""Backfill progress: the terminal bar, the log lines and the gauges show the same figures."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field

import pytest
import structlog

from ingestor import metrics, progress
from ingestor.backfill import BackfillStats, SlicePlan
from ingestor.progress import Figures, ProgressReporter, format_duration, render_bar


@dataclass(frozen=True)
class Item:
    created_ms: int


@dataclass
class FakeBackfill:
    plan: SlicePlan[Item]
    stats: BackfillStats = field(default_factory=BackfillStats)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def backfill(start: int, end: int, slice_ms: int) -> FakeBackfill:
    return FakeBackfill(SlicePlan[Item].build(start, end, slice_ms, 1000))


def emit_head(b: FakeBackfill, n: int, events: int) -> None:
    """Pretends the `n` oldest slices were fetched (`events` in all) and committed."""
    for _ in range(n):
        b.plan.slices.pop(0)
        b.stats.slices_done += 1
    b.stats.events += events


def gauge(name: str, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    assert value is not None, name
    return value


def test_figures_give_committed_share_rate_slices_and_an_eta_from_the_pace_so_far() -> None:
    clock = Clock()
    b = backfill(0, 100_000, 10_000)
    r = ProgressReporter(b, "v1:platform", start_ms=0, end_ms=100_000, clock=clock, tty=False)
    assert r.figures().eta_s is None  # no pace yet
    clock.t += 10
    emit_head(b, 4, 8_000)
    f = r.figures()
    assert f == Figures(8_000, 800.0, 4, 10, 0.4, 15.0)  # 40% in 10 s: 60% left takes 15 s


def test_a_resumed_backfill_starts_at_its_committed_share_and_times_only_the_rest() -> None:
    clock = Clock()
    b = backfill(50_000, 100_000, 10_000)  # the first half was committed by an earlier run
    r = ProgressReporter(b, "v1:platform", start_ms=0, end_ms=100_000, clock=clock, tty=False)
    assert r.figures().ratio == 0.5
    clock.t += 20
    emit_head(b, 1, 100)
    f = r.figures()
    assert f.ratio == 0.6
    assert f.eta_s == pytest.approx(80.0)  # 10% per 20 s, 40% left


def test_dense_splits_grow_the_slice_total() -> None:
    b = backfill(0, 60_000, 60_000)
    r = ProgressReporter(b, "v1:platform", start_ms=0, end_ms=60_000, tty=False)
    assert r.figures().slices_total == 1
    b.plan.split(b.plan.slices[0], 30_000, 3)
    assert r.figures().slices_total == 4


def test_bar_shows_share_events_rate_slices_and_eta() -> None:
    line = render_bar(Figures(120_000, 8012.4, 12, 30, 0.375, 80), width=8)
    assert line == ("backfill [###.....]  37.5%  120,000 events  8,012/s  slices 12/30  ETA 1m20s")
    assert render_bar(Figures(0, 0.0, 0, 3, 0.0, None), width=4).endswith("ETA ?")


def test_durations_read_naturally() -> None:
    assert [format_duration(s) for s in (None, 0, 42.4, 185, 3720)] == [
        "?",
        "0s",
        "42s",
        "3m05s",
        "1h02m",
    ]


async def test_on_a_tty_one_line_is_redrawn_on_stderr_and_ended_by_a_newline() -> None:
    stream = Tty()
    b = backfill(0, 40_000, 10_000)
    r = ProgressReporter(b, "v1:platform", start_ms=0, end_ms=40_000, stream=stream)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(r.run())
        await asyncio.sleep(progress.REFRESH_SECONDS * 2.5)
        emit_head(b, 4, 500)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    text = stream.getvalue()
    draws = text.split("\r\x1b[2K")[1:]
    assert len(draws) >= 2
    assert all("\n" not in d for d in draws[:-1])  # one line, redrawn in place
    assert draws[-1].startswith("backfill [" + "#" * progress.BAR_WIDTH + "] 100.0%  500 events")
    assert draws[-1].endswith("slices 4/4  ETA 0s\n")
    assert not [e for e in logs if e["event"] == "backfill progress"]  # the bar replaces them


async def test_without_a_tty_a_log_line_every_period_and_the_gauges_carry_the_figures() -> None:
    stream = io.StringIO()
    b = backfill(0, 40_000, 10_000)
    r = ProgressReporter(b, "v2:acct_1", start_ms=0, end_ms=40_000, every=0.05, stream=stream)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(r.run())
        emit_head(b, 1, 300)
        await asyncio.sleep(0.18)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert stream.getvalue() == ""
    lines = [e for e in logs if e["event"] == "backfill progress"]
    assert len(lines) >= 2
    last = lines[-1]
    assert last["stream"] == "v2:acct_1"
    assert (last["events"], last["slices_done"], last["slices_total"]) == (300, 1, 4)
    assert last["progress"] == 0.25
    assert last["events_per_s"] > 0
    assert "eta_s" in last
    assert gauge("ingestor_backfill_progress_ratio") == 0.25
    assert gauge("ingestor_backfill_slices", state="done") == 1
    assert gauge("ingestor_backfill_slices", state="total") == 4


def test_gauges_sum_the_streams_that_are_backfilling() -> None:
    a = backfill(0, 10_000, 5_000)
    b = backfill(0, 30_000, 10_000)
    ra = ProgressReporter(a, "v1:platform", start_ms=0, end_ms=10_000, tty=False)
    rb = ProgressReporter(b, "v2:platform", start_ms=0, end_ms=30_000, tty=False)
    emit_head(a, 2, 10)  # a done
    ra.update()
    total = rb.update()
    assert (total.slices_done, total.slices_total, total.events) == (2, 5, 10)
    assert total.ratio == 0.25  # weighted by time span: 10 s done of 40 s
    assert gauge("ingestor_backfill_progress_ratio") == 0.25
    ra.close()
    rb.close()
