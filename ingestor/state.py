"""State-topic records: a stream's head record and its seen-id chunks, encoded (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ingestor.errors import StateCorrupt
from ingestor.events import Stream

VERSION = 1
# Seen ids are kept in buckets of created time (see stream.py); a bucket is written as one
# or more chunks of at most this many (id, created_ms) entries, ~45 bytes each, which keeps
# every state record far below Kafka's 1 MB default message size whatever the event rate.
CHUNK_ENTRIES = 15_000
SEEN_MARK = "/seen/"

Entry = tuple[str, int]


@dataclass(slots=True)
class BackfillProgress:
    """Backfill of [start_ms, end_ms): everything in [start_ms, cursor_ms) is committed.

    Slices commit oldest first, so what is done is always a prefix and one cursor says it.
    """

    start_ms: int
    end_ms: int
    cursor_ms: int

    @property
    def complete(self) -> bool:
        return self.cursor_ms >= self.end_ms

    def ratio(self) -> float:
        span = self.end_ms - self.start_ms
        return 1.0 if span <= 0 else min(1.0, (self.cursor_ms - self.start_ms) / span)


@dataclass(slots=True)
class Head:
    """The head record of a stream: cursors, progress and its seen-chunk index."""

    stream: Stream
    seq: int = 0
    tail_start_ms: int | None = None
    watermark_ms: int | None = None
    backfill: BackfillProgress | None = None
    buckets: dict[int, int] = field(default_factory=dict)  # bucket start -> chunk count
    # Wall time of the start of the last complete read of the stream's newest events: the
    # time it is *read through* (alarms use this, not the newest event, which a quiet stream
    # never advances).
    read_through_ms: int | None = None
    # Lower bound of the next sweep (the previous sweep's start less the sweep window): no
    # id at or above it may leave the seen window, and a restart sweeps from here.
    sweep_lo_ms: int | None = None


def head_key(stream: Stream) -> bytes:
    return stream.key.encode()


def chunk_key(stream: Stream, bucket: int, chunk: int) -> bytes:
    return f"{stream.key}{SEEN_MARK}{bucket}/{chunk}".encode()


def is_head_key(key: bytes) -> bool:
    return SEEN_MARK.encode() not in key


def encode_head(head: Head) -> bytes:
    bf = head.backfill
    return orjson.dumps(
        {
            "v": VERSION,
            "stream": head.stream.key,
            "seq": head.seq,
            "tail_start_ms": head.tail_start_ms,
            "watermark_ms": head.watermark_ms,
            "backfill": None
            if bf is None
            else {"start_ms": bf.start_ms, "end_ms": bf.end_ms, "cursor_ms": bf.cursor_ms},
            "buckets": {str(b): n for b, n in sorted(head.buckets.items())},
            "read_through_ms": head.read_through_ms,
            "sweep_lo_ms": head.sweep_lo_ms,
        }
    )


def decode_head(key: bytes, value: bytes) -> Head:
    """Raises StateCorrupt rather than guessing a cursor from a damaged record."""
    text = key.decode("utf-8", "replace")
    try:
        stream = Stream.parse(text)
        raw = orjson.loads(value)
        if not isinstance(raw, dict) or raw.get("v") != VERSION:
            version = raw.get("v") if isinstance(raw, dict) else None
            raise StateCorrupt(f"state {text}: unknown version {version!r}")
        # Records written before the rename of "source partition" to "stream" name it so.
        named = raw["stream"] if "stream" in raw else raw["partition"]
        if named != text:
            raise StateCorrupt(f"state {text}: record names stream {named!r}")
        bf = raw["backfill"]
        return Head(
            stream=stream,
            seq=_int(raw["seq"]),
            tail_start_ms=_opt_int(raw["tail_start_ms"]),
            watermark_ms=_opt_int(raw["watermark_ms"]),
            backfill=None
            if bf is None
            else BackfillProgress(_int(bf["start_ms"]), _int(bf["end_ms"]), _int(bf["cursor_ms"])),
            buckets={int(b): _int(n) for b, n in raw["buckets"].items()},
            # Absent in heads written before they existed: unknown, so derived conservatively.
            read_through_ms=_opt_int(raw.get("read_through_ms")),
            sweep_lo_ms=_opt_int(raw.get("sweep_lo_ms")),
        )
    except StateCorrupt:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, orjson.JSONDecodeError) as exc:
        raise StateCorrupt(f"state {text}: cannot decode: {exc!r}"[:200]) from exc


def encode_chunks(entries: Sequence[Entry]) -> list[bytes]:
    """One bucket's entries as chunk values (at least one, possibly empty)."""
    n = max(1, -(-len(entries) // CHUNK_ENTRIES))
    return [
        orjson.dumps({"v": VERSION, "e": entries[i * CHUNK_ENTRIES : (i + 1) * CHUNK_ENTRIES]})
        for i in range(n)
    ]


def decode_chunk(key: bytes, value: bytes | None) -> list[Entry]:
    if value is None:
        raise StateCorrupt(f"state: missing seen chunk {key.decode('utf-8', 'replace')}")
    try:
        raw: Any = orjson.loads(value)
        if raw.get("v") != VERSION:
            raise StateCorrupt(f"state {key!r}: unknown chunk version {raw.get('v')!r}")
        return [(str(i), _int(c)) for i, c in raw["e"]]
    except StateCorrupt:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, orjson.JSONDecodeError) as exc:
        raise StateCorrupt(f"state {key!r}: cannot decode chunk: {exc!r}"[:200]) from exc


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}"[:80])
    return value


def _opt_int(value: Any) -> int | None:
    return None if value is None else _int(value)
