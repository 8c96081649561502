"""Live state of one stream: cursors, seen window, backfill progress (pure)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from ingestor import state
from ingestor.config import KafkaConfig
from ingestor.dedupe import BUCKET_MS, SeenWindow, bucket_of, meets
from ingestor.events import Event, Stream
from ingestor.state import BackfillProgress, Head

# Seen ids are persisted in buckets of created time (dedupe.BUCKET_MS), so a pruned bucket
# becomes tombstones: state records stay small however high the event rate, and the seen set
# is bounded by rate x window, never by history. Within a bucket chunks are append-only (a
# commit writes only the ids it added) until a bucket has this many chunks and more than
# twice what its ids need; then it is rewritten whole, once, into as few chunks as fit.
COMPACT_CHUNKS = 32
# Chunks are sized from kafka.max_message_bytes; the pipeline passes the configured value.
DEFAULT_MAX_MESSAGE_BYTES = KafkaConfig().max_message_bytes
# How far the persisted read-through time may lag the live one: alarms work in days, and
# persisting it on every poll would cost a Kafka transaction per stream per second.
READ_THROUGH_PERSIST_MS = 60_000
# Owed restart ranges kept at most: past it the two closest merge into one that covers both
# (re-reading more is safe; a crash loop must not grow the head record without bound).
MAX_OWED = 8

__all__ = ["BUCKET_MS", "BackfillProgress", "Seen", "StreamState", "merge_ranges"]


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

    def __init__(
        self, stream: Stream, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> None:
        self.head = Head(stream)
        self.seen = SeenWindow()
        self._chunk_limit = state.chunk_value_limit(stream, max_message_bytes)
        self._dirty: dict[int, list[str]] = {}  # bucket -> ids added since the last snapshot
        self._chunk_bytes: dict[int, int] = {}  # bucket -> bytes of its live chunks
        self._dropped: dict[int, int] = {}  # pruned bucket -> chunks to delete
        self._head_dirty = True
        # In memory only: the range of every read in flight, and the ids a reader has
        # taken to publish but not yet queued (a concurrent reader of the stream skips them).
        self._reads: dict[int, tuple[int, int | None]] = {}  # token -> [lo, hi or open)
        self._read_ids = itertools.count()
        self._pending: set[str] = set()

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

    @property
    def read_through_ms(self) -> int | None:
        return self.head.read_through_ms

    @property
    def sweep_lo_ms(self) -> int | None:
        return self.head.sweep_lo_ms

    @property
    def granularity_ms(self) -> int:
        """The unit of `created`: whole seconds in v1, milliseconds in v2."""
        return 1000 if self.stream.api == "v1" else 1

    @property
    def seen_count(self) -> int:
        """How many ids the seen window holds."""
        return len(self.seen)

    def has_seen(self, event_id: str, created_ms: int) -> bool:
        """Whether the event `event_id`, created at `created_ms`, is published already."""
        return self.seen.seen(event_id, created_ms)

    def chunk_key(self, bucket: int, chunk: int) -> bytes:
        return state.chunk_key(self.stream, bucket, chunk)

    # --- mutation ---------------------------------------------------------------------------

    def filter_new(self, events: Iterable[Event]) -> tuple[list[Event], int]:
        return self.seen.filter_new(events)

    def mark(self, events: Iterable[Seen]) -> None:
        """Records events as published (they are being queued with this state)."""
        for event in events:
            self._pending.discard(event.id)
            self._remember(event.id, event.created_ms)

    def claim(self, events: Iterable[Event]) -> tuple[list[Event], int]:
        """Like `filter_new`, also skipping ids another reader holds, and holds the fresh ones.

        The holder either queues them (`mark` releases) or fails, and a failed read is read
        again, so a skipped id is never lost; `release` drops what was held but not queued.
        """
        fresh, dups = self.seen.filter_new(events)
        held = [e for e in fresh if e.id not in self._pending]
        self._pending.update(e.id for e in held)
        return held, dups + len(fresh) - len(held)

    def release(self, events: Iterable[Seen]) -> None:
        for event in events:
            self._pending.discard(event.id)

    def is_new(self, event: Seen) -> bool:
        """Neither published nor held by a reader."""
        return not self.has_seen(event.id, event.created_ms) and event.id not in self._pending

    def _remember(self, event_id: str, created_ms: int) -> None:
        if self.seen.add(event_id, created_ms):
            self._dirty.setdefault(bucket_of(created_ms), []).append(event_id)

    def advance_watermark(self, created_ms: int) -> None:
        if self.head.watermark_ms is None or created_ms > self.head.watermark_ms:
            self.head.watermark_ms = created_ms
            self._head_dirty = True

    def set_tail_start(self, ms: int) -> None:
        self.head.tail_start_ms = ms
        if self.head.watermark_ms is None:
            self.head.watermark_ms = ms
        if self.head.sweep_lo_ms is None:
            self.head.sweep_lo_ms = ms
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

    # --- read bounds ------------------------------------------------------------------------
    # The invariant that makes re-reads exact: an id may leave the seen window only when no
    # read that is running or still to come can return it. Every read registers its lower
    # bound while it runs, and the next poll and the next sweep have theirs here, so
    # `prune_horizon` is the oldest of them: never "now" less a window.

    def poll_lo(self, overlap_ms: int) -> int:
        """Lower bound of the next poll: the overlap behind the newest event seen."""
        assert self.head.tail_start_ms is not None
        wm = self.head.watermark_ms
        lo = (
            self.head.tail_start_ms if wm is None else max(self.head.tail_start_ms, wm - overlap_ms)
        )
        return lo - lo % self.granularity_ms

    def sweep_bounds(self, overlap_ms: int, window_ms: int) -> tuple[int, int]:
        """[lo, hi) of the next sweep: from where the last one left its lower bound (so a
        long sweep, a lagging poll or a stop never skips a late event) up to the poll window.

        Never cut here: the bound moves only over ranges a read has settled. (It was once cut
        at twice the window below `hi`, which silently skipped, unread, the late events of a
        stream whose polls lagged a window behind: seed 303.) `Tail` cuts it, loudly, only
        while sweeps themselves are slower than their window (`cut_sweep`).
        """
        assert self.head.tail_start_ms is not None
        hi = self.poll_lo(overlap_ms)
        lo = self.head.sweep_lo_ms
        if lo is None:
            lo = hi - window_ms
        lo = max(lo, self.head.tail_start_ms)
        return lo - lo % self.granularity_ms, hi

    def cut_sweep(self, lo_ms: int, hi_ms: int, max_ms: int) -> int:
        """`lo_ms` raised (to a whole unit of `created`) so that [lo, hi_ms) spans at most
        `max_ms`; [lo_ms, the result) is what the cut skips."""
        cut = hi_ms - max_ms
        return max(lo_ms, cut - cut % self.granularity_ms)

    def set_sweep_lo(self, lo_ms: int) -> None:
        """Moves the next sweep's lower bound forward (never back)."""
        assert self.head.tail_start_ms is not None
        lo = max(lo_ms, self.head.tail_start_ms)
        if self.head.sweep_lo_ms is None or lo > self.head.sweep_lo_ms:
            self.head.sweep_lo_ms = lo
            self._head_dirty = True

    def settle(self, started_ms: int, window_ms: int) -> None:
        """A read that began at `started_ms` covered everything from the next sweep's bound,
        or from where the owed ranges end, up to the time the stream is read through: events
        created a window before the earlier of the two were visible to it, so the bound moves
        there (never back).

        Not from the read's start alone: a poll or catch-up lists the newest events first and
        may take longer than the window to queue the rest (v2 hydration under a tight budget).
        Meanwhile the sweeps' upper bound (`poll_lo`) stays behind it, and a bound moved on
        from wall time would pass, unread, the events that read listed before they became
        visible. Until some read has gone through, the bound stays where it is.
        """
        read_through = self.head.read_through_ms
        if read_through is None:
            return
        self.set_sweep_lo(min(started_ms, read_through) - window_ms)

    def settle_swept(self, lo_ms: int, hi_ms: int, read_at_ms: int, window_ms: int) -> bool:
        """A sweep read [lo_ms, hi_ms) from `read_at_ms` on: every event created a window
        before that was visible to it, so [lo_ms, min(hi_ms, read_at_ms - window_ms)) needs
        no further sweep. Trims the owed ranges that start in it, and moves the next sweep's
        bound over it when the bound lies in it; returns whether anything changed.
        """
        end = min(hi_ms, read_at_ms - window_ms)
        end -= end % self.granularity_ms
        if end <= lo_ms:
            return False
        changed = False
        owed: list[tuple[int, int]] = []
        for o_lo, o_hi in self.head.owed:
            if lo_ms <= o_lo < end:
                o_lo = end
                changed = True
            if o_hi > o_lo:
                owed.append((o_lo, o_hi))
            else:
                changed = True
        if changed:
            self.head.owed = owed
            self._head_dirty = True
        bound = self.head.sweep_lo_ms
        if bound is not None and lo_ms <= bound < end:
            self.set_sweep_lo(end)
            changed = True
        return changed

    def finish_sweep(self, started_ms: int, window_ms: int, *, restart: bool = False) -> None:
        """A sweep that began at `started_ms` is done: the next one starts a window behind the
        earlier of that and the time the stream is read through (`settle`).

        `restart`: it was a restart sweep, which read every owed range; they are settled with
        the bound, in the same head record.
        """
        if self.head.read_through_ms is None:
            return
        self.settle(started_ms, window_ms)
        if restart and self.head.owed:
            self.head.owed = []
            self._head_dirty = True

    @property
    def owed(self) -> list[tuple[int, int]]:
        """[lo, hi) ranges the restart sweep owes (see `owe_restart_sweep`)."""
        return list(self.head.owed)

    def owe_restart_sweep(self, overlap_ms: int, window_ms: int) -> list[tuple[int, int]]:
        """At a restart, before anything is read: records in the head what its sweep owes,
        the next sweep's bounds up to where the stop began, and returns every range owed,
        those an earlier restart sweep left unfinished included.

        Kept until a restart sweep finishes (`finish_sweep(..., restart=True)`): the catch-up
        moves the watermark on, so a process stopped before its restart sweep is done could
        otherwise no longer tell the next one where that sweep began and ended.
        """
        lo, hi = self.sweep_bounds(overlap_ms, window_ms)
        if hi > lo:
            owed = merge_ranges([*self.head.owed, (lo, hi)], MAX_OWED)
            if owed != self.head.owed:
                self.head.owed = owed
                self._head_dirty = True
        return list(self.head.owed)

    def set_read_through(self, started_ms: int) -> None:
        """A read that began at `started_ms` (wall time) has returned the newest events and
        they are queued: the stream is read through that time."""
        old = self.head.read_through_ms
        if old is not None and started_ms <= old:
            return
        self.head.read_through_ms = started_ms
        # Otherwise it rides along with the next head record written for another reason.
        if old is None or started_ms - old >= READ_THROUGH_PERSIST_MS:
            self._head_dirty = True

    @contextlib.contextmanager
    def reading(self, lo_ms: int, hi_ms: int | None = None) -> Iterator[None]:
        """Registers a read of [lo_ms, hi_ms) (None: open above) for as long as it runs."""
        token = next(self._read_ids)
        self._reads[token] = (lo_ms, hi_ms)
        try:
            yield
        finally:
            del self._reads[token]

    def prune_horizon(self, overlap_ms: int, window_ms: int, *, ranges: bool = True) -> int:
        """The oldest created time any running or future read can still return
        (`window_ms` 0: no sweeps, so the next sweep's bound holds nothing back; `ranges`
        False: but for the owed ranges and the reads of a bounded range, which
        `prune_unread` keeps as ranges)."""
        bounds = [lo for lo, hi in self._reads.values() if ranges or hi is None]
        if self.head.tail_start_ms is not None:
            bounds.append(self.poll_lo(overlap_ms))
        if self.head.sweep_lo_ms is not None and window_ms > 0:
            bounds.append(self.head.sweep_lo_ms)
        if ranges:
            bounds.extend(lo for lo, _ in self.head.owed)
        if not bounds:
            return 0
        return min(bounds) - self.granularity_ms

    def intake_horizon(self, created_ms: int, overlap_ms: int, window_ms: int) -> int:
        """The horizon that decides a pushed event created at `created_ms` (webhook intake:
        below it, an unseen event is settled): `prune_horizon`, or, for an event in a
        stretch `prune_unread` forgets between the ranges it keeps, the bound above it."""
        full = self.prune_horizon(overlap_ms, window_ms)
        main = self.prune_horizon(overlap_ms, window_ms, ranges=False)
        if not full <= created_ms < main:
            return full
        if any(lo <= created_ms < hi for lo, hi in self._kept_ranges()):
            return full
        return main

    def _kept_ranges(self) -> list[tuple[int, int]]:
        g = self.granularity_ms
        keep = [(lo - g, hi + g) for lo, hi in self.head.owed]
        keep += [(lo - g, hi + g) for lo, hi in self._reads.values() if hi is not None]
        return keep

    def prune_unread(self, overlap_ms: int, window_ms: int) -> None:
        """Forgets every id no running or future read can return: those below the horizon
        but for the owed ranges and the bounded reads running. (A single cutoff at the
        oldest of them held, after an hour's stop and crashes, every id from before the
        stop to now while the restart sweep read the owed range: seed 300.)"""
        self.prune(self.prune_horizon(overlap_ms, window_ms, ranges=False), self._kept_ranges())

    def prune(self, older_than_ms: int, keep: Sequence[tuple[int, int]] = ()) -> None:
        """Forgets seen ids in buckets wholly older than `older_than_ms`, but for buckets
        that meet a [lo, hi) range of `keep`."""
        cutoff = older_than_ms - older_than_ms % BUCKET_MS
        gone = set(self.seen.prune(cutoff, keep))
        gone.update(b for b in self.head.buckets if b < cutoff and not meets(b, keep))
        for bucket in gone:
            self._dirty.pop(bucket, None)
            self._chunk_bytes.pop(bucket, None)
            chunks = self.head.buckets.pop(bucket, None)
            if chunks:
                self._dropped[bucket] = chunks
                self._head_dirty = True

    # --- persistence ------------------------------------------------------------------------

    def snapshot(self) -> dict[bytes, bytes | None]:
        """State-topic records for everything changed since the last snapshot (None = delete).

        Costs what changed: a bucket's new ids go into new chunks, its older chunks stay.
        """
        out: dict[bytes, bytes | None] = {}
        # Tombstones first: a pruned bucket that gets ids again writes chunks from 0, and
        # those must win over the deletes of its old chunks.
        for bucket, count in self._dropped.items():
            for n in range(count):
                out[self.chunk_key(bucket, n)] = None
        for bucket in sorted(self._dirty):
            count = self.head.buckets.get(bucket, 0)
            size = self._chunk_bytes.get(bucket, 0)
            needed = -(-size // self._chunk_limit)
            if count >= COMPACT_CHUNKS and count > 2 * needed:
                values = state.encode_chunks(self.seen.ids(bucket), self._chunk_limit)
                first, size = 0, 0
                for n in range(len(values), count):
                    out[self.chunk_key(bucket, n)] = None
            else:
                values = state.encode_chunks(self._dirty[bucket], self._chunk_limit)
                first = count
            for n, value in enumerate(values, first):
                out[self.chunk_key(bucket, n)] = value
            self.head.buckets[bucket] = first + len(values)
            self._chunk_bytes[bucket] = size + sum(len(v) for v in values)
            self._head_dirty = True
        self._dirty.clear()
        self._dropped.clear()
        if out or self._head_dirty:
            self.head.seq += 1
            out[state.head_key(self.stream)] = state.encode_head(self.head)
            self._head_dirty = False
        return out

    @classmethod
    def restore(
        cls,
        records: Mapping[bytes, bytes],
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> dict[Stream, StreamState]:
        """Rebuilds every stream from the state topic's latest records."""
        out: dict[Stream, StreamState] = {}
        for key, value in records.items():
            if not state.is_head_key(key):
                continue
            head = state.decode_head(key, value)
            rt = cls(head.stream, max_message_bytes=max_message_bytes)
            for bucket, chunks in head.buckets.items():
                ids: list[str] = []
                size = 0
                for n in range(chunks):
                    ckey = state.chunk_key(head.stream, bucket, n)
                    chunk = records.get(ckey)
                    ids += state.decode_chunk(ckey, chunk)
                    size += len(chunk or b"")
                rt.seen.load(bucket, ids)
                rt._chunk_bytes[bucket] = size
            rt.head = head
            rt._dirty.clear()
            rt._head_dirty = False
            out[head.stream] = rt
        return out


def merge_ranges(ranges: Iterable[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    """`ranges` as sorted, disjoint [lo, hi) ranges covering at least the same times, at most
    `limit` of them (past it the two closest merge into one that spans both)."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(r for r in ranges if r[1] > r[0]):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    while len(merged) > max(1, limit):
        i = min(range(len(merged) - 1), key=lambda j: merged[j + 1][0] - merged[j][1])
        merged[i : i + 2] = [(merged[i][0], merged[i + 1][1])]
    return merged
