"""health: Readiness marks and probes, and the cursor gap alarm's gauge and log lines."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import structlog

from ingestor import health, logs
from ingestor.metrics import READY, REGISTRY

KEY = "sk_live_51ObserveSecretKey"


@pytest.fixture(autouse=True)
def reset() -> Iterator[None]:
    yield
    logs.reset_logging()
    structlog.contextvars.clear_contextvars()


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


# --- Readiness --------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_readiness_needs_kafka_state_and_a_recent_poll() -> None:
    """Ready only after all three marks; READY gauge follows; reasons say what is missing."""
    clock = Clock()
    r = health.Readiness(max_poll_age_seconds=60, clock=clock)
    assert not r.ready()
    assert r.reasons() == [
        "kafka: not connected",
        "state: not restored from the state topic yet",
        "stripe: no successful poll yet",
    ]
    assert REGISTRY.get_sample_value("ingestor_ready") == 0
    r.mark_kafka(True)
    r.mark_restored()
    r.mark_poll_ok()
    assert r.ready()
    assert r.reasons() == []
    assert REGISTRY.get_sample_value("ingestor_ready") == 1


def test_readiness_goes_stale_when_polls_stop() -> None:
    """A last successful poll older than max_poll_age_seconds makes the process not ready."""
    clock = Clock()
    r = health.Readiness(max_poll_age_seconds=60, clock=clock)
    r.mark_kafka(True)
    r.mark_restored()
    r.mark_poll_ok()
    clock.now += 61
    assert not r.ready()
    assert r.reasons() == ["stripe: last successful poll 61s ago (max 60s)"]
    r.mark_poll_ok()
    assert r.ready()


def test_readiness_flips_on_mark_kafka_false() -> None:
    """The pipeline's mark_kafka(False) (KafkaUnavailable) makes it not ready at once."""
    r = health.Readiness()
    r.mark_kafka(True)
    r.mark_restored()
    r.mark_poll_ok()
    r.mark_kafka(False)
    assert r.reasons() == ["kafka: not connected"]
    READY.set(0)


async def test_probe_failures_raise_reasons_and_clear_when_healthy_again() -> None:
    """check() runs probes: False, an exception and a timeout each name the probe."""
    r = health.Readiness(probe_timeout_seconds=0.05)
    r.mark_kafka(True)
    r.mark_restored()
    r.mark_poll_ok()
    healthy = {"kafka": True}

    async def kafka_probe() -> bool:
        return healthy["kafka"]

    async def raising() -> bool:
        raise OSError(f"connect failed with {KEY}")

    r.add_probe("kafka", kafka_probe)
    assert await r.check() == []
    healthy["kafka"] = False
    assert await r.check() == ["kafka: probe reports unhealthy"]
    assert REGISTRY.get_sample_value("ingestor_ready") == 0
    healthy["kafka"] = True
    r.add_probe("other", raising)
    [reason] = await r.check()
    assert reason.startswith("other: probe failed: OSError: connect failed with sk_live_****")
    r.remove_probe("other")
    assert await r.check() == []
    assert REGISTRY.get_sample_value("ingestor_ready") == 1


async def test_probe_that_hangs_is_bounded_by_the_probe_timeout() -> None:
    """A hung probe reports a timeout instead of hanging /readyz."""
    import asyncio

    r = health.Readiness(probe_timeout_seconds=0.05)
    never = asyncio.Event()

    async def hung() -> bool:
        await never.wait()
        return True

    r.add_probe("sink", hung)
    reasons = await r.check()
    assert "sink: probe timed out after 0.05s" in reasons


# --- gap alarm --------------------------------------------------------------------------------

DAY_MS = 86_400_000


def gap_gauge(stream: str) -> float | None:
    return REGISTRY.get_sample_value("ingestor_cursor_gap_alarm", {"stream": stream})


def test_check_gap_sets_the_alarm_past_the_threshold_only() -> None:
    """Older than 7 days: alarm=1; younger: 0; no cursor yet: 0."""
    now = 100 * DAY_MS
    assert health.check_gap("v1:platform", now - 8 * DAY_MS, now)
    assert gap_gauge("v1:platform") == 1
    assert not health.check_gap("v1:platform", now - 6 * DAY_MS, now)
    assert gap_gauge("v1:platform") == 0
    assert not health.check_gap("v2:acct_1", None, now)
    assert gap_gauge("v2:acct_1") == 0
    assert health.check_gap("v2:acct_1", now - 2000, now, threshold_s=1.0)


def test_gap_alarm_logs_a_warning_once_when_raised_and_info_when_cleared() -> None:
    """GapAlarm logs transitions, not every poll."""
    out = io.StringIO()
    logs.configure_logging("info", "json", out)
    alarm = health.GapAlarm(threshold_s=7 * 86400)
    now = 100 * DAY_MS
    assert alarm.check("v1:acct_9", now - 10 * DAY_MS, now)
    assert alarm.check("v1:acct_9", now - 10 * DAY_MS, now)
    assert alarm.alarming == frozenset({"v1:acct_9"})
    assert not alarm.check("v1:acct_9", now - DAY_MS, now)
    lines = json_lines(out)
    assert [(x["level"], x["stream"]) for x in lines] == [
        ("warning", "v1:acct_9"),
        ("info", "v1:acct_9"),
    ]
    assert lines[0]["gap_seconds"] == 10 * 86400
    assert gap_gauge("v1:acct_9") == 0
