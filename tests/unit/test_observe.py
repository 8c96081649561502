"""observe: JSON/console logs with context and secret masking; Readiness; the gap alarm."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import structlog

from ingestor import observe
from ingestor.metrics import READY, REGISTRY

KEY = "sk_live_51ObserveSecretKey"


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def reset() -> Iterator[None]:
    yield
    observe.reset_logging()
    structlog.contextvars.clear_contextvars()


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_when_not_a_tty_with_time_level_logger_and_bound_context() -> None:
    """Non-TTY + auto: one JSON object per line with ISO UTC time, level, logger, context."""
    out = io.StringIO()
    observe.configure_logging("info", "auto", out)
    structlog.contextvars.bind_contextvars(stream="v1:platform", request_id="req_123")
    log = structlog.get_logger("ingestor.test")
    log.info("page fetched", event_id="evt_1", count=3)
    log.debug("dropped: below level")
    [line] = json_lines(out)
    assert line["event"] == "page fetched"
    assert line["level"] == "info"
    assert line["logger"] == "ingestor.test"
    assert line["timestamp"].endswith("Z")
    assert line["timestamp"][:2] == "20"
    assert line["stream"] == "v1:platform"
    assert line["request_id"] == "req_123"
    assert line["event_id"] == "evt_1"
    assert line["count"] == 3


def test_debug_level_shows_debug_lines() -> None:
    """level=debug lets our own debug lines through."""
    out = io.StringIO()
    observe.configure_logging("debug", "json", out)
    structlog.get_logger("ingestor.test").debug("detail", n=1)
    assert [line["event"] for line in json_lines(out)] == ["detail"]


def test_console_renderer_on_a_tty() -> None:
    """auto on a TTY renders the console format, not JSON."""
    out = TTY()
    observe.configure_logging("info", "auto", out)
    structlog.get_logger("ingestor.test").info("hello console", k="v")
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())  # colors on a terminal
    assert "hello console" in text
    assert "k=v" in text
    assert "[ingestor.test]" in text
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(text.splitlines()[0])


def test_stdlib_loggers_route_through_the_same_renderer_at_warning() -> None:
    """aiokafka/aiohttp stdlib logs come out as JSON lines too, but only from WARNING up."""
    out = io.StringIO()
    observe.configure_logging("debug", "json", out)
    logging.getLogger("aiokafka.conn").info("chatty %s", "info")
    logging.getLogger("aiokafka.conn").warning("broker %s is gone", "1")
    [line] = json_lines(out)
    assert line["event"] == "broker 1 is gone"
    assert line["level"] == "warning"
    assert line["logger"] == "aiokafka.conn"


@pytest.mark.parametrize(
    "secret",
    [KEY, "sk_test_51abcDEF", "rk_live_51restricted", "rk_test_xyz9", "whsec_abc123signing"],
)
def test_mask_secrets_hides_stripe_keys(secret: str) -> None:
    """Anything shaped like a Stripe secret loses everything after its prefix."""
    masked = observe.mask_secrets(f"auth failed for {secret}, retry")
    assert secret not in masked
    assert observe.SECRET_MASK in masked
    assert masked.startswith("auth failed for ")
    assert masked.endswith(", retry")


def test_mask_secrets_leaves_ordinary_ids_alone() -> None:
    """Event ids, publishable keys and plain words are not secrets."""
    text = "evt_123 pk_test_abc ch_1 skip_test_x"
    assert observe.mask_secrets(text) == text


def test_log_processor_masks_keys_in_messages_nested_values_and_tracebacks() -> None:
    """Defense in depth: a key logged by mistake never reaches the output, anywhere."""
    out = io.StringIO()
    observe.configure_logging("info", "json", out)
    log = structlog.get_logger("ingestor.test")
    log.warning(f"header was Bearer {KEY}", nested={"k": [KEY, 1]}, plain=KEY)
    try:
        raise ValueError(f"bad key {KEY}")
    except ValueError:
        log.exception("failed")
    logging.getLogger("aiohttp.client").error("stdlib saw %s", KEY)
    text = out.getvalue()
    assert KEY not in text
    lines = json_lines(out)
    assert lines[0]["nested"] == {"k": ["sk_live_********", 1]}
    assert "ValueError: bad key sk_live_********" in lines[1]["exception"]
    assert lines[2]["event"] == "stdlib saw sk_live_********"


def test_configure_twice_does_not_duplicate_lines() -> None:
    """Reconfiguring replaces the handler; each record is written once."""
    first, second = io.StringIO(), io.StringIO()
    observe.configure_logging("info", "json", first)
    observe.configure_logging("info", "json", second)
    structlog.get_logger("ingestor.test").info("once")
    assert first.getvalue() == ""
    assert len(json_lines(second)) == 1


def test_bad_level_or_format_is_refused() -> None:
    """Unknown level/format raise instead of silently logging nothing."""
    with pytest.raises(ValueError, match="level"):
        observe.configure_logging("loud", "json", io.StringIO())
    with pytest.raises(ValueError, match="format"):
        observe.configure_logging("info", "xml", io.StringIO())


# --- Readiness --------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_readiness_needs_kafka_state_and_a_recent_poll() -> None:
    """Ready only after all three marks; READY gauge follows; reasons say what is missing."""
    clock = Clock()
    r = observe.Readiness(max_poll_age_seconds=60, clock=clock)
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
    r = observe.Readiness(max_poll_age_seconds=60, clock=clock)
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
    r = observe.Readiness()
    r.mark_kafka(True)
    r.mark_restored()
    r.mark_poll_ok()
    r.mark_kafka(False)
    assert r.reasons() == ["kafka: not connected"]
    READY.set(0)


async def test_probe_failures_raise_reasons_and_clear_when_healthy_again() -> None:
    """check() runs probes: False, an exception and a timeout each name the probe."""
    r = observe.Readiness(probe_timeout_seconds=0.05)
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

    r = observe.Readiness(probe_timeout_seconds=0.05)
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
    assert observe.check_gap("v1:platform", now - 8 * DAY_MS, now)
    assert gap_gauge("v1:platform") == 1
    assert not observe.check_gap("v1:platform", now - 6 * DAY_MS, now)
    assert gap_gauge("v1:platform") == 0
    assert not observe.check_gap("v2:acct_1", None, now)
    assert gap_gauge("v2:acct_1") == 0
    assert observe.check_gap("v2:acct_1", now - 2000, now, threshold_s=1.0)


def test_gap_alarm_logs_a_warning_once_when_raised_and_info_when_cleared() -> None:
    """GapAlarm logs transitions, not every poll."""
    out = io.StringIO()
    observe.configure_logging("info", "json", out)
    alarm = observe.GapAlarm(threshold_s=7 * 86400)
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
