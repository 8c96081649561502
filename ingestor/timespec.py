"""Parses `--since WHEN`: an RFC 3339 time or a duration back from now (30d, 12h, 90m, 45s)."""

from __future__ import annotations

import re

from ingestor.errors import ConfigError
from ingestor.events import rfc3339_to_ms

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_since(text: str, now_ms: int) -> int:
    """Unix ms for WHEN; raises ConfigError naming `--since` when it is neither form."""
    match = _DURATION.match(text)
    if match:
        return now_ms - int(float(match.group(1)) * _UNIT_MS[match.group(2)])
    try:
        return rfc3339_to_ms(text.strip())
    except ValueError:
        raise ConfigError(
            "--since", f"expected an RFC 3339 time or a duration like 7d/12h, got {text!r}"
        ) from None
