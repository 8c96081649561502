"""Live state of one stream: cursors, seen window, backfill progress (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from ingestor import state
from ingestor.dedupe import SeenWindow
from ingestor.events import Event, Stream
from ingestor.state import BackfillProgress, Entry, Head

# Seen ids are persisted in buckets of created time, so a commit rewrites only the buckets
# it touched and a pruned bucket becomes tombstones: state records stay small however high
# the event rate, and the seen set is bounded by rate x window, never by history.
BUCKET_MS = 10_000

__all__ = ["BUCKET_MS", "BackfillProgress", "Seen", "StreamState"]


class Seen(Protocol):
    """What the seen window needs of an event (an Event, or one already routed)."""

    @property
    def id(self) -> str: ...

    @property
    def created_ms(self) -> int: ...


class StreamState:
    """Cursor, seen window and backfill progress of one stream.

    Readers mutate it as they hand batches to the committer, and each batch carries a
    `snapshot()` of the state as of that batch. Batches of one stream commit in order, so
    the newest committed snapshot always matches what Kafka holds; after a failed transaction
    the pipeline rebuilds every runtime from the state topic instead of guessing.
    """

    def __init__(self, stream: Stream) -> None:
        self.head = Head(stream)
        self.seen = SeenWindow()
        self._buckets: dict[int, list[Entry]] = {}
        self._dirty: set[int] = set()
        self._dropped: dict[int, int] = {}
        self._head_dirty = True

    # --- read access ------------------------------------------------------------------------

    @property
    def stream(self) -> Stream:
        return self.head.stream

    @property
    def tail_start_ms(self) -> int | None:
        return self.head.tail_start_ms

    @property
    def watermark_ms(self) -> int | None:
        return self.head.watermark_ms

    @property
    def backfill(self) -> BackfillProgress | None:
        return self.head.backfill

    @property
    def seq(self) -> int:
        return self.head.seq

    def chunk_key(self, bucket: int, chunk: int) -> bytes:
        return state.chunk_key(self.stream, bucket, chunk)

    # --- mutation ---------------------------------------------------------------------------

    def filter_new(self, events: Iterable[Event]) -> tuple[list[Event], int]:
        return self.seen.filter_new(events)

    def mark(self, events: Iterable[Seen]) -> None:
        for event in events:
            if not self.seen.seen(event.id):
                self._remember(event.id, event.created_ms)

    def _remember(self, event_id: str, created_ms: int) -> None:
        self.seen.add(event_id, created_ms)
        bucket = created_ms - created_ms % BUCKET_MS
        self._buckets.setdefault(bucket, []).append((event_id, created_ms))
        self._dirty.add(bucket)

    def advance_watermark(self, created_ms: int) -> None:
        if self.head.watermark_ms is None or created_ms > self.head.watermark_ms:
            self.head.watermark_ms = created_ms
            self._head_dirty = True

    def set_tail_start(self, ms: int) -> None:
        self.head.tail_start_ms = ms
        if self.head.watermark_ms is None:
            self.head.watermark_ms = ms
        self._head_dirty = True

    def set_backfill(self, progress: BackfillProgress | None) -> None:
        self.head.backfill = progress
        self._head_dirty = True

    def advance_backfill(self, cursor_ms: int) -> None:
        bf = self.head.backfill
        if bf is None:
            raise ValueError(f"{self.stream}: no backfill to advance")
        bf.cursor_ms = max(bf.cursor_ms, cursor_ms)
        self._head_dirty = True

    def prune(self, older_than_ms: int) -> None:
        """Forgets seen ids in buckets wholly older than `older_than_ms`."""
        cutoff = older_than_ms - older_than_ms % BUCKET_MS
        self.seen.prune(cutoff)
        for bucket in [b for b in self._buckets if b < cutoff]:
            del self._buckets[bucket]
            self._dirty.discard(bucket)
            chunks = self.head.buckets.pop(bucket, None)
            if chunks is not None:
                self._dropped[bucket] = chunks
                self._head_dirty = True

    # --- persistence ------------------------------------------------------------------------

    def snapshot(self) -> dict[bytes, bytes | None]:
        """State-topic records for everything changed since the last snapshot (None = delete)."""
        out: dict[bytes, bytes | None] = {}
        for bucket in sorted(self._dirty):
            values = state.encode_chunks(self._buckets.get(bucket, []))
            for n, value in enumerate(values):
                out[self.chunk_key(bucket, n)] = value
            if self.head.buckets.get(bucket) != len(values):
                self.head.buckets[bucket] = len(values)
                self._head_dirty = True
        for bucket, count in self._dropped.items():
            for n in range(count):
                out[self.chunk_key(bucket, n)] = None
        self._dirty.clear()
        self._dropped.clear()
        if out or self._head_dirty:
            self.head.seq += 1
            out[state.head_key(self.stream)] = state.encode_head(self.head)
            self._head_dirty = False
        return out

    @classmethod
    def restore(cls, records: Mapping[bytes, bytes]) -> dict[Stream, StreamState]:
        """Rebuilds every stream from the state topic's latest records."""
        out: dict[Stream, StreamState] = {}
        for key, value in records.items():
            if not state.is_head_key(key):
                continue
            head = state.decode_head(key, value)
            rt = cls(head.stream)
            for bucket, chunks in head.buckets.items():
                for n in range(chunks):
                    ckey = state.chunk_key(head.stream, bucket, n)
                    for event_id, created_ms in state.decode_chunk(ckey, records.get(ckey)):
                        rt._remember(event_id, created_ms)
            rt.head = head
            rt._dirty.clear()
            rt._head_dirty = False
            out[head.stream] = rt
        return out
