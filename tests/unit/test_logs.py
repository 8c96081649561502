"""logs: JSON/console lines with time, level, logger and bound context; secrets masked."""

from __future__ import annotations

import ast
import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from ingestor import logs

KEY = "sk_live_51ObserveSecretKey"


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def reset() -> Iterator[None]:
    yield
    logs.reset_logging()
    structlog.contextvars.clear_contextvars()


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_when_not_a_tty_with_time_level_logger_and_bound_context() -> None:
    """Non-TTY + auto: one JSON object per line with ISO UTC time, level, logger, context."""
    out = io.StringIO()
    logs.configure_logging("info", "auto", out)
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
    logs.configure_logging("debug", "json", out)
    structlog.get_logger("ingestor.test").debug("detail", n=1)
    assert [line["event"] for line in json_lines(out)] == ["detail"]


def test_console_renderer_on_a_tty() -> None:
    """auto on a TTY renders the console format, not JSON."""
    out = TTY()
    logs.configure_logging("info", "auto", out)
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
    logs.configure_logging("debug", "json", out)
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
    masked = logs.mask_secrets(f"auth failed for {secret}, retry")
    assert secret not in masked
    assert logs.SECRET_MASK in masked
    assert masked.startswith("auth failed for ")
    assert masked.endswith(", retry")


def test_mask_secrets_leaves_ordinary_ids_alone() -> None:
    """Event ids, publishable keys and plain words are not secrets."""
    text = "evt_123 pk_test_abc ch_1 skip_test_x"
    assert logs.mask_secrets(text) == text


def test_log_processor_masks_keys_in_messages_nested_values_and_tracebacks() -> None:
    """Defense in depth: a key logged by mistake never reaches the output, anywhere."""
    out = io.StringIO()
    logs.configure_logging("info", "json", out)
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
    logs.configure_logging("info", "json", first)
    logs.configure_logging("info", "json", second)
    structlog.get_logger("ingestor.test").info("once")
    assert first.getvalue() == ""
    assert len(json_lines(second)) == 1


def test_bad_level_or_format_is_refused() -> None:
    """Unknown level/format raise instead of silently logging nothing."""
    with pytest.raises(ValueError, match="level"):
        logs.configure_logging("loud", "json", io.StringIO())
    with pytest.raises(ValueError, match="format"):
        logs.configure_logging("info", "xml", io.StringIO())


_LEVELS = frozenset({"debug", "info", "warning", "error", "exception", "critical"})
# A phrase that starts in lower case; an identifier ("sink.topic_created") is not one.
_EVENT_NAME = re.compile(r"^(--)?[a-z]")
_IDENTIFIER = re.compile(r"[\w.]*[._][\w.]*")


def _log_event_names() -> dict[str, str]:
    """Every literal event name passed to a logger method in ingestor/, with its place."""
    root = Path(logs.__file__).parent
    names: dict[str, str] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            first, func = node.args[0], node.func
            by_name = isinstance(func, ast.Attribute) and func.attr in _LEVELS
            # (log.info if busy else log.debug)("name", ...): the level chosen at run time.
            by_choice = isinstance(func, ast.IfExp)
            name = first.value if isinstance(first, ast.Constant) else None
            if (by_name or by_choice) and isinstance(name, str):
                names[name] = f"{path.relative_to(root)}:{node.lineno}"
    return names


def test_log_event_names_share_one_style() -> None:
    """Every event name is a short phrase in words, not an identifier: one style to grep."""
    names = _log_event_names()
    assert len(names) > 40  # the scan found the calls (a broken scan would pass vacuously)
    odd = {
        name: where
        for name, where in names.items()
        if not _EVENT_NAME.match(name) or _IDENTIFIER.fullmatch(name)
    }
    assert odd == {}
