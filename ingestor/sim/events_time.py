"""RFC 3339 parsing for v2 filters, the simulator's own (independent of the product's parser)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

# Date, `T`, time, optional fraction, then `Z` or a numeric offset: what Stripe's v2 API accepts.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def parse_rfc3339_ms(text: str) -> int:
    """RFC 3339 -> unix ms (fraction truncated to ms); ValueError for anything else (bare dates
    and numbers included)."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction, zulu, sign, off_h, off_m = m.groups()[6:]
    try:
        when = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"not an RFC 3339 time: {text!r}") from exc
    ms = int(when.timestamp()) * 1000 + int((fraction or "0")[:3].ljust(3, "0"))
    if not zulu:
        if int(off_h) > 23 or int(off_m) > 59:
            raise ValueError(f"not an RFC 3339 time: {text!r}")
        offset_min = int(off_h) * 60 + int(off_m)
        ms -= (offset_min if sign == "+" else -offset_min) * 60_000
    return ms
