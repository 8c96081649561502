"""RFC 3339 parsing for v2 filters: the shared helper, narrowed to the errors the API reports."""

from __future__ import annotations

from ingestor.events import rfc3339_to_ms


def parse_rfc3339_ms(text: str) -> int:
    """RFC 3339 -> unix ms; ValueError for anything else (bare dates and numbers included)."""
    if "T" not in text.upper():
        raise ValueError(text)
    return rfc3339_to_ms(text)
