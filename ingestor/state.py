"""State records per source partition: watermark, seen window, backfill progress (pure)."""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import orjson

from ingestor.errors import StateCorrupt
from ingestor.events import SourcePartition

VERSION = 1
# Every state record (head or chunk) stays at or under this many bytes: half of Kafka's default
# 1 MB message limit, leaving room for the events sharing the transaction's batches.
MAX_RECORD_BYTES = 512 * 1024
CHUNK_SEP = "#seen."

Interval = tuple[int, int]


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, disjoint `[lo, hi)` intervals; touching ones merge and empty ones vanish."""
    merged: list[Interval] = []
    for lo, hi in sorted(i for i in intervals if i[0] < i[1]):
        if merged and lo <= merged[-1][1]:
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


def subtract(whole: Interval, done: Iterable[Interval]) -> list[Interval]:
    """The parts of `whole` not covered by `done`, as sorted `[lo, hi)` intervals."""
    start, end = whole
    missing: list[Interval] = []
    cursor = start
    for lo, hi in merge_intervals(done):
        if hi <= cursor:
            continue
        if lo >= end:
            break
        if lo > cursor:
            missing.append((cursor, lo))
        cursor = max(cursor, hi)
    if cursor < end:
        missing.append((cursor, end))
    return missing


@dataclass
class BackfillProgress:
    """Target range `[start_ms, end_ms)` and the merged slices already committed."""

    start_ms: int
    end_ms: int
    done: list[Interval] = field(default_factory=list)
    complete: bool = False

    def add_done(self, lo: int, hi: int) -> None:
        """Records a committed slice (clipped to the target range)."""
        lo, hi = max(lo, self.start_ms), min(hi, self.end_ms)
        self.done = merge_intervals([*self.done, (lo, hi)])

    def missing(self) -> list[Interval]:
        return subtract((self.start_ms, self.end_ms), self.done)

    def ratio(self) -> float:
        span = self.end_ms - self.start_ms
        if span <= 0:
            return 1.0
        return 1.0 - sum(hi - lo for lo, hi in self.missing()) / span


@dataclass
class PartitionState:
    """What a source partition needs to resume exactly where its last transaction ended."""

    partition: SourcePartition
    watermark_ms: int | None = None
    seen: dict[str, int] = field(default_factory=dict)
    backfill: BackfillProgress | None = None
    batch_seq: int = 0
    updated_ms: int = 0


def state_key(partition: SourcePartition) -> bytes:
    return partition.key.encode()


def _chunk_key(partition_key: str, index: int) -> bytes:
    # '#' never occurs in a partition key ("v1:platform", "v2:acct_..."), so chunks are told apart.
    return f"{partition_key}{CHUNK_SEP}{index}".encode()


def _pack_seen(seen: Mapping[str, int]) -> str:
    # Ids grouped by created time with delta-coded times, then deflated: many v1 events share a
    # second and ids of one account share long substrings. Lossless, because a false "seen"
    # would drop an event.
    groups: dict[int, list[str]] = {}
    for event_id, created_ms in seen.items():
        groups.setdefault(created_ms, []).append(event_id)
    rows: list[list[Any]] = []
    previous = 0
    for created_ms in sorted(groups):
        rows.append([created_ms - previous, *sorted(groups[created_ms])])
        previous = created_ms
    return base64.b64encode(zlib.compress(orjson.dumps(rows), 6)).decode()


def _unpack_seen(blob: str) -> dict[str, int]:
    try:
        rows = orjson.loads(zlib.decompress(base64.b64decode(blob, validate=True)))
    except (binascii.Error, zlib.error, orjson.JSONDecodeError, ValueError) as exc:
        raise StateCorrupt(f"state: unreadable seen window: {exc}") from exc
    seen: dict[str, int] = {}
    created_ms = 0
    if not isinstance(rows, list):
        raise StateCorrupt("state: seen window is not a list")
    for row in rows:
        if not (isinstance(row, list) and row and _is_int(row[0])):
            raise StateCorrupt("state: malformed seen window row")
        created_ms += row[0]
        for event_id in row[1:]:
            if not isinstance(event_id, str):
                raise StateCorrupt("state: seen id is not a string")
            seen[event_id] = created_ms
    return seen


def _head(state: PartitionState) -> dict[str, Any]:
    bf = state.backfill
    return {
        "v": VERSION,
        "p": state.partition.key,
        "wm": state.watermark_ms,
        "seq": state.batch_seq,
        "upd": state.updated_ms,
        "bf": None
        if bf is None
        else {"s": bf.start_ms, "e": bf.end_ms, "done": bf.done, "c": bf.complete},
    }


def encode_records(
    state: PartitionState, *, max_bytes: int = MAX_RECORD_BYTES, previous_chunks: int = 0
) -> list[tuple[bytes, bytes | None]]:
    """(key, value) records for the compacted state topic, each value at most `max_bytes`.

    Usually one record keyed by the partition. A seen window too large for it is split into
    chunk records `<partition>#seen.<i>` written in the same transaction and tied to the head
    by `batch_seq`; chunks the previous state had but this one does not get tombstones (None).
    """
    head = _head(state)
    blob = _pack_seen(state.seen)
    head["seen"] = blob
    value = orjson.dumps(head)
    records: list[tuple[bytes, bytes | None]] = []
    chunks = 0
    if len(value) > max_bytes:
        head["seen"] = None
        # Room for the chunk's own JSON fields around the piece of the blob.
        piece = max_bytes - 200 - len(state.partition.key)
        if piece < 1024:
            raise ValueError(f"max_bytes {max_bytes} too small for a state chunk")
        pieces = [blob[i : i + piece] for i in range(0, len(blob), piece)]
        chunks = len(pieces)
        head["chunks"] = chunks
        value = orjson.dumps(head)
        for index, data in enumerate(pieces):
            chunk = {"v": VERSION, "p": state.partition.key, "seq": state.batch_seq}
            chunk |= {"i": index, "n": chunks, "d": data}
            records.append((_chunk_key(state.partition.key, index), orjson.dumps(chunk)))
    records.insert(0, (state_key(state.partition), value))
    records += [(_chunk_key(state.partition.key, i), None) for i in range(chunks, previous_chunks)]
    return records


def chunk_count(value: bytes) -> int:
    """How many chunk records a head value references (for the next `previous_chunks`)."""
    try:
        doc = orjson.loads(value)
        return int(doc.get("chunks", 0)) if isinstance(doc, dict) else 0
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return 0


def encode(state: PartitionState) -> bytes:
    """One self-contained state record; raises ValueError if it would exceed MAX_RECORD_BYTES
    (use `encode_records` to split it)."""
    records = encode_records(state)
    if len(records) != 1 or records[0][1] is None:
        raise ValueError(
            f"state of {state.partition.key} needs {len(records)} records; use encode_records"
        )
    return records[0][1]


def decode(
    key: bytes, value: bytes, chunks: Mapping[bytes, bytes | None] | None = None
) -> PartitionState:
    """The state in a head record; `chunks` maps chunk keys to values when the head has any.

    Raises StateCorrupt on anything it cannot read exactly, never guessing a cursor.
    """
    doc = _load(key, value)
    try:
        partition = SourcePartition.parse(key.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise StateCorrupt(f"state: bad key {key[:80]!r}") from exc
    if doc.get("p") != partition.key:
        raise StateCorrupt(f"state: key {partition.key} holds the state of {doc.get('p')!r}")
    wm, seq, upd = doc.get("wm"), doc.get("seq"), doc.get("upd")
    bad_numbers = StateCorrupt(f"state {partition.key}: bad watermark, seq or updated time")
    if not (wm is None or _is_int(wm)):
        raise bad_numbers
    if not _is_int(seq):
        raise bad_numbers
    if not _is_int(upd):
        raise bad_numbers
    n = doc.get("chunks", 0)
    if not _is_int(n) or n < 0:
        raise StateCorrupt(f"state {partition.key}: bad chunk count")
    if n == 0:
        blob = doc.get("seen")
        if not isinstance(blob, str):
            raise StateCorrupt(f"state {partition.key}: missing seen window")
    else:
        blob = _join_chunks(partition.key, seq, n, chunks or {})
    return PartitionState(
        partition=partition,
        watermark_ms=wm,
        seen=_unpack_seen(blob),
        backfill=_decode_backfill(partition.key, doc.get("bf")),
        batch_seq=seq,
        updated_ms=upd,
    )


def decode_all(latest: Mapping[bytes, bytes | None]) -> dict[SourcePartition, PartitionState]:
    """Every partition's state from the state topic read to its end (latest value per key)."""
    states: dict[SourcePartition, PartitionState] = {}
    for key, value in latest.items():
        if value is None or CHUNK_SEP.encode() in key:
            continue
        state = decode(key, value, latest)
        states[state.partition] = state
    return states


def _join_chunks(pkey: str, seq: int, n: int, chunks: Mapping[bytes, bytes | None]) -> str:
    parts: list[str] = []
    for index in range(n):
        ckey = _chunk_key(pkey, index)
        value = chunks.get(ckey)
        if value is None:
            raise StateCorrupt(f"state {pkey}: chunk {index} of {n} missing")
        doc = _load(ckey, value)
        if doc.get("p") != pkey or doc.get("seq") != seq or doc.get("i") != index:
            raise StateCorrupt(f"state {pkey}: chunk {index} belongs to another batch")
        if doc.get("n") != n or not isinstance(doc.get("d"), str):
            raise StateCorrupt(f"state {pkey}: malformed chunk {index}")
        parts.append(doc["d"])
    return "".join(parts)


def _decode_backfill(pkey: str, raw: Any) -> BackfillProgress | None:
    if raw is None:
        return None
    bad = StateCorrupt(f"state {pkey}: malformed backfill progress")
    if not isinstance(raw, dict):
        raise bad
    start, end, done, complete = raw.get("s"), raw.get("e"), raw.get("done"), raw.get("c")
    if not _is_int(start) or not isinstance(complete, bool):
        raise bad
    if not _is_int(end):
        raise bad
    if not isinstance(done, list):
        raise bad
    intervals: list[Interval] = []
    for item in done:
        if not (isinstance(item, list) and len(item) == 2 and all(map(_is_int, item))):
            raise bad
        if item[0] >= item[1]:
            raise bad
        intervals.append((item[0], item[1]))
    if intervals != merge_intervals(intervals):
        raise bad
    return BackfillProgress(start, end, intervals, complete)


def _load(key: bytes, value: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise StateCorrupt(f"state {key[:80]!r}: not JSON") from exc
    if not isinstance(doc, dict):
        raise StateCorrupt(f"state {key[:80]!r}: not an object")
    if doc.get("v") != VERSION:
        raise StateCorrupt(f"state {key[:80]!r}: unknown version {doc.get('v')!r}")
    return doc


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
