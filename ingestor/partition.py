"""Live state of one source partition, and the state-topic records that persist it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson

from ingestor.dedupe import SeenWindow
from ingestor.errors import StateCorrupt
from ingestor.events import Event, SourcePartition

# Seen ids are persisted in buckets of created time, so a commit rewrites only the buckets
# it touched and a pruned bucket becomes one tombstone: the state record stays small however
# high the event rate, and the seen set is bounded by rate x window, never by history.
BUCKET_MS = 10_000
# Entries per state record; ~45 bytes each keeps a chunk far below Kafka's 1 MB default.
CHUNK_ENTRIES = 15_000
VERSION = 1


@dataclass(slots=True)
class BackfillProgress:
    """Backfill of [start_ms, end_ms): everything in [start_ms, cursor_ms) is committed."""

    start_ms: int
    end_ms: int
    cursor_ms: int

    @property
    def complete(self) -> bool:
        return self.cursor_ms >= self.end_ms


class PartitionRuntime:
    """Cursor, seen window and backfill progress of one source partition.

    Pure: no I/O. Readers mutate it as they hand batches to the committer, and each batch
    carries a `snapshot()` of the state as of that batch. Batches of one partition commit in
    order, so the newest committed snapshot always matches what Kafka holds; after any failed
    transaction the pipeline rebuilds every runtime from the state topic instead of guessing.
    """

    def __init__(self, partition: SourcePartition) -> None:
        self.partition = partition
        self.tail_start_ms: int | None = None
        self.watermark_ms: int | None = None
        self.backfill: BackfillProgress | None = None
        self.seq = 0
        self.seen = SeenWindow()
        self._buckets: dict[int, list[tuple[str, int]]] = {}
        self._persisted: dict[int, int] = {}  # bucket start -> chunks in the state topic
        self._dirty: set[int] = set()
        self._dropped: dict[int, int] = {}
        self._main_dirty = True

    # --- keys -------------------------------------------------------------------------------

    @property
    def main_key(self) -> bytes:
        return self.partition.key.encode()

    def chunk_key(self, bucket: int, chunk: int) -> bytes:
        return f"{self.partition.key}/seen/{bucket}/{chunk}".encode()

    # --- mutation ---------------------------------------------------------------------------

    def filter_new(self, events: Iterable[Event]) -> tuple[list[Event], int]:
        return self.seen.filter_new(events)

    def mark(self, events: Iterable[Event]) -> None:
        for event in events:
            if self.seen.seen(event.id):
                continue
            self.seen.add(event.id, event.created_ms)
            bucket = event.created_ms - event.created_ms % BUCKET_MS
            self._buckets.setdefault(bucket, []).append((event.id, event.created_ms))
            self._dirty.add(bucket)

    def advance_watermark(self, created_ms: int) -> None:
        if self.watermark_ms is None or created_ms > self.watermark_ms:
            self.watermark_ms = created_ms
            self._main_dirty = True

    def set_tail_start(self, ms: int) -> None:
        self.tail_start_ms = ms
        if self.watermark_ms is None:
            self.watermark_ms = ms
        self._main_dirty = True

    def set_backfill(self, progress: BackfillProgress | None) -> None:
        self.backfill = progress
        self._main_dirty = True

    def advance_backfill(self, cursor_ms: int) -> None:
        assert self.backfill is not None
        self.backfill.cursor_ms = max(self.backfill.cursor_ms, cursor_ms)
        self._main_dirty = True

    def prune(self, older_than_ms: int) -> None:
        """Forgets seen ids in buckets wholly older than `older_than_ms`."""
        cutoff = older_than_ms - older_than_ms % BUCKET_MS
        self.seen.prune(cutoff)
        for bucket in [b for b in self._buckets if b < cutoff]:
            del self._buckets[bucket]
            self._dirty.discard(bucket)
            if bucket in self._persisted:
                self._dropped[bucket] = self._persisted.pop(bucket)
                self._main_dirty = True

    # --- persistence ------------------------------------------------------------------------

    def snapshot(self) -> dict[bytes, bytes | None]:
        """State-topic records for everything changed since the last snapshot (None = delete)."""
        out: dict[bytes, bytes | None] = {}
        for bucket in sorted(self._dirty):
            entries = self._buckets.get(bucket, [])
            chunks = max(1, -(-len(entries) // CHUNK_ENTRIES))
            for n in range(chunks):
                part = entries[n * CHUNK_ENTRIES : (n + 1) * CHUNK_ENTRIES]
                out[self.chunk_key(bucket, n)] = orjson.dumps({"v": VERSION, "e": part})
            if self._persisted.get(bucket, 0) != chunks:
                self._main_dirty = True
            self._persisted[bucket] = chunks
        for bucket, chunks in self._dropped.items():
            for n in range(chunks):
                out[self.chunk_key(bucket, n)] = None
        self._dirty.clear()
        self._dropped.clear()
        if out or self._main_dirty:
            self.seq += 1
            out[self.main_key] = self._encode_main()
            self._main_dirty = False
        return out

    def _encode_main(self) -> bytes:
        bf = self.backfill
        return orjson.dumps(
            {
                "v": VERSION,
                "partition": self.partition.key,
                "seq": self.seq,
                "tail_start_ms": self.tail_start_ms,
                "watermark_ms": self.watermark_ms,
                "backfill": None
                if bf is None
                else {"start_ms": bf.start_ms, "end_ms": bf.end_ms, "cursor_ms": bf.cursor_ms},
                "buckets": {str(b): n for b, n in sorted(self._persisted.items())},
            }
        )

    @classmethod
    def restore(cls, records: Mapping[bytes, bytes]) -> dict[SourcePartition, PartitionRuntime]:
        """Rebuilds every partition from the state topic's latest records."""
        out: dict[SourcePartition, PartitionRuntime] = {}
        for key, value in records.items():
            text = key.decode("utf-8", "replace")
            if "/" in text:
                continue
            try:
                partition = SourcePartition.parse(text)
                main = orjson.loads(value)
                if main.get("v") != VERSION:
                    raise StateCorrupt(f"state {text}: unknown version {main.get('v')!r}")
                rt = cls(partition)
                rt.seq = int(main["seq"])
                rt.tail_start_ms = main["tail_start_ms"]
                rt.watermark_ms = main["watermark_ms"]
                bf = main["backfill"]
                if bf is not None:
                    rt.backfill = BackfillProgress(
                        int(bf["start_ms"]), int(bf["end_ms"]), int(bf["cursor_ms"])
                    )
                for bucket_text, chunks in main["buckets"].items():
                    bucket = int(bucket_text)
                    rt._persisted[bucket] = int(chunks)
                    for n in range(int(chunks)):
                        chunk = records.get(rt.chunk_key(bucket, n))
                        if chunk is None:
                            raise StateCorrupt(f"state {text}: missing seen chunk {bucket}/{n}")
                        for event_id, created_ms in orjson.loads(chunk)["e"]:
                            rt.seen.add(event_id, created_ms)
                            rt._buckets.setdefault(bucket, []).append((event_id, created_ms))
            except StateCorrupt:
                raise
            except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
                raise StateCorrupt(f"state {text}: cannot decode: {exc!r}"[:200]) from exc
            rt._main_dirty = False
            out[partition] = rt
        return out
