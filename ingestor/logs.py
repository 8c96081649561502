"""Logs: structlog and stdlib logging rendered as JSON lines or console text, secrets masked."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import orjson
import structlog

# --- secret masking ---------------------------------------------------------------------------

# Stripe secret and restricted keys, webhook signing secrets. Publishable keys (pk_) are public.
_SECRET_RE = re.compile(r"\b(sk_(?:test|live)_|rk_(?:test|live)_|whsec_)[A-Za-z0-9]+")
SECRET_MASK = "********"


def mask_secrets(text: str) -> str:
    """Replaces anything that looks like a Stripe secret with its prefix and a mask."""
    return _SECRET_RE.sub(lambda m: m.group(1) + SECRET_MASK, text)


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, Mapping):
        return {k: _mask_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_mask_value(v) for v in value)
    return value


def mask_secrets_processor(
    _logger: Any, _method: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Defense in depth: even if code logs a key by mistake, the rendered line never shows it."""
    for key, value in event_dict.items():
        event_dict[key] = _mask_value(value)
    return event_dict


# --- logging ----------------------------------------------------------------------------------

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR
_handler: logging.Handler | None = None


def _orjson_dumps(obj: Any, **kw: Any) -> str:
    # ProcessorFormatter wants str; orjson makes bytes, and is much faster than json.dumps.
    return orjson.dumps(obj, default=kw.get("default"), option=orjson.OPT_NON_STR_KEYS).decode()


def configure_logging(level: str, fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Sets up structlog and stdlib logging to render through one renderer onto `stream`.

    `fmt` "auto" renders JSON lines when the stream is not a TTY (containers, files) and a
    readable console format on a terminal. Our own loggers (`ingestor.*`) log at `level`;
    third-party libraries (aiokafka, aiohttp) only at WARNING, so their chatter stays out.
    Safe to call again (tests, CLI): the previous handler is replaced, never duplicated.
    """
    global _handler
    out = sys.stdout if stream is None else stream
    if level not in _LEVELS:
        raise ValueError(f"unknown log level {level!r}")
    isatty = getattr(out, "isatty", None)
    tty = bool(isatty is not None and isatty())
    if fmt == "auto":
        fmt = "console" if tty else "json"
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    elif fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(
            colors=tty, exception_formatter=structlog.dev.plain_traceback
        )
    else:
        raise ValueError(f"unknown log format {fmt!r}")

    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Tracebacks become a string first so the masking below covers them too.
            structlog.processors.format_exc_info,
            mask_secrets_processor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    _handler = handler
    logging.getLogger("ingestor").setLevel(_LEVELS[level])

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: the CLI and tests reconfigure, and loggers are created at import time.
        cache_logger_on_first_use=False,
    )


def reset_logging() -> None:
    """Removes the handler configure_logging installed and restores structlog's defaults."""
    global _handler
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
        _handler = None
    structlog.reset_defaults()
