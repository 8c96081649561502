"""State-topic records: a stream's head record and its seen-id chunks, encoded (pure)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ingestor.errors import IngestorError, StateCorrupt
from ingestor.events import Stream

VERSION = 1
# Seen ids are kept in buckets of created time (see stream.py); a bucket is written as one or
# more chunks. VERSION 1 chunks list [id, created_ms] entries; CHUNK_VERSION 2 chunks list ids
# only, since the bucket in the key already says when they were created. Both are read.
CHUNK_VERSION = 2
SEEN_MARK = "/seen/"
# Room a state record needs beyond its key and value: Kafka's framing of a record alone in its
# batch (route.record_size counts 101 bytes), with margin. The key is counted exactly, so no
# chunk can exceed kafka.max_message_bytes whatever the length of the ids or of the stream key.
RECORD_FRAMING = 256
# The longest bucket start and chunk number a key can hold, for the size bound above.
_WIDEST_BUCKET = -(10**15)
_WIDEST_CHUNK = 10**7 - 1


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
    # Lower bound of the next sweep (the earlier of the previous sweep's start and the
    # read-through time, less the sweep window): no id at or above it may leave the seen
    # window, and a restart sweeps from here.
    sweep_lo_ms: int | None = None
    # [lo, hi) ranges a restart sweep owes, kept until one finishes: a process stopped while
    # its restart sweep ran leaves them here, and the next restart sweeps them too, however
    # far its catch-up moved the watermark meanwhile (sorted, disjoint; see
    # StreamState.owe_restart_sweep).
    owed: list[tuple[int, int]] = field(default_factory=list)


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
            "owed": [[lo, hi] for lo, hi in head.owed],
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
            owed=[(_int(lo), _int(hi)) for lo, hi in raw.get("owed", ())],
        )
    except StateCorrupt:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, orjson.JSONDecodeError) as exc:
        raise StateCorrupt(f"state {text}: cannot decode: {exc!r}"[:200]) from exc


def chunk_value_limit(stream: Stream, max_message_bytes: int) -> int:
    """Largest chunk value whose record (key and framing included) fits `max_message_bytes`."""
    key = len(chunk_key(stream, _WIDEST_BUCKET, _WIDEST_CHUNK))
    return max_message_bytes - RECORD_FRAMING - key


def encode_chunks(ids: Iterable[str], max_bytes: int) -> list[bytes]:
    """Ids as chunk values of at most `max_bytes` each (none for no ids).

    Sized in bytes, not in entries: ids range from 28 characters (v1) to 57 and more (v2),
    and a chunk over the broker's limit could never be written. Every value is measured
    after encoding; a list that does not fit is split evenly until each part does.
    """
    todo = [list(ids)]
    out: list[bytes] = []
    while todo:
        part = todo.pop()
        if not part:
            continue
        value = orjson.dumps({"v": CHUNK_VERSION, "ids": part})
        if len(value) <= max_bytes:
            out.append(value)
        elif len(part) == 1:
            raise IngestorError(
                f"an event id of {len(part[0])} characters cannot fit a state record "
                f"of at most {max_bytes} bytes (kafka.max_message_bytes too small)"
            )
        else:
            # Aim each piece a little under the limit so one pass usually suffices.
            pieces = min(len(part), -(-len(value) * 21 // (max_bytes * 20)))
            pieces = max(2, pieces)
            step = -(-len(part) // pieces)
            todo.extend(part[i : i + step] for i in reversed(range(0, len(part), step)))
    return out


def decode_chunk(key: bytes, value: bytes | None) -> list[str]:
    """The ids of one chunk, in either chunk version."""
    if value is None:
        raise StateCorrupt(f"state: missing seen chunk {key.decode('utf-8', 'replace')}")
    try:
        raw: Any = orjson.loads(value)
        version = raw.get("v")
        if version == CHUNK_VERSION:
            return [_str(i) for i in raw["ids"]]
        if version == 1:
            return [_v1_entry_id(entry) for entry in raw["e"]]
        raise StateCorrupt(f"state {key!r}: unknown chunk version {version!r}")
    except StateCorrupt:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, orjson.JSONDecodeError) as exc:
        raise StateCorrupt(f"state {key!r}: cannot decode chunk: {exc!r}"[:200]) from exc


def _v1_entry_id(entry: Any) -> str:
    event_id, created_ms = entry
    _int(created_ms)
    return _str(event_id)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}"[:80])
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}"[:80])
    return value


def _opt_int(value: Any) -> int | None:
    return None if value is None else _int(value)
