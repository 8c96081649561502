"""Seen window: event ids already published, by bucket of created time, packed when cold."""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from ingestor.events import Event

# An event's `created` never changes, so the bucket it falls in is all a membership test needs
# to look at, and forgetting a whole bucket at once is exact pruning by age.
BUCKET_MS = 10_000
# A bucket packs its recent ids once they are at least this many and at least as many as it
# has packed already: each id is repacked O(log n) times, and a hot bucket's set stays small.
PACK_MIN = 1024


def bucket_of(created_ms: int) -> int:
    """Start of the bucket an event created at `created_ms` belongs to."""
    return created_ms - created_ms % BUCKET_MS


class SeenBucket:
    """The ids of one bucket: recent ones in a set, the rest packed into sorted arrays.

    A `str` in a set costs ~80 bytes plus up to ~70 of table per id; packed, an ASCII id costs
    its length plus an 8-byte hash. Packed ids are grouped by length (no padding, nothing to
    confuse) and sorted by (hash, id): a lookup bisects the hashes and compares the bytes of
    the few entries with an equal hash, so membership is exact, never probabilistic. The
    hashes are Python's (seeded per process), which is fine: packed arrays are never persisted.
    """

    __slots__ = ("_other", "_packed", "_packed_count", "_recent")

    def __init__(self) -> None:
        self._recent: set[str] = set()
        # Ids that are not ASCII cannot be packed by length; Stripe's never are.
        self._other: set[str] | None = None
        # id length -> (sorted hashes, the ids' bytes concatenated in the same order)
        self._packed: dict[int, tuple[array[int], bytes]] = {}
        self._packed_count = 0

    def __contains__(self, event_id: str) -> bool:
        if event_id in self._recent or (self._other is not None and event_id in self._other):
            return True
        run = self._packed.get(len(event_id))
        if run is None:
            return False
        hashes, blob = run
        h = hash(event_id)
        i = bisect_left(hashes, h)
        n = len(hashes)
        if i == n or hashes[i] != h:
            return False
        width = len(event_id)
        key = event_id.encode()
        while i < n and hashes[i] == h:
            if blob[i * width : (i + 1) * width] == key:
                return True
            i += 1
        return False

    def __len__(self) -> int:
        return len(self._recent) + self._packed_count + len(self._other or ())

    def add(self, event_id: str) -> bool:
        """Adds `event_id`; False when it was already there."""
        if event_id in self:
            return False
        if not event_id.isascii():
            if self._other is None:
                self._other = set()
            self._other.add(event_id)
            return True
        self._recent.add(event_id)
        if len(self._recent) >= max(PACK_MIN, self._packed_count):
            self.pack()
        return True

    def load(self, ids: Iterable[str]) -> None:
        """Adds many ids at once and packs them (a state restore)."""
        for event_id in ids:
            # With nothing packed yet the set alone says what is there: skip the full lookup.
            if not self._packed and event_id.isascii():
                self._recent.add(event_id)
            else:
                self.add(event_id)
        self.pack()

    def pack(self) -> None:
        """Moves the recent ids into the packed arrays."""
        by_len: dict[int, list[str]] = {}
        for event_id in self._recent:
            by_len.setdefault(len(event_id), []).append(event_id)
        for width, new in by_len.items():
            entries = [(hash(x), x.encode()) for x in new]
            run = self._packed.get(width)
            if run is not None:
                hashes, blob = run
                entries += [(h, blob[i * width : (i + 1) * width]) for i, h in enumerate(hashes)]
            # Timsort merges the already sorted old run with the new ones in about linear time.
            entries.sort()
            self._packed[width] = (
                array("q", [h for h, _ in entries]),
                b"".join(b for _, b in entries),
            )
            self._packed_count += len(new)
        self._recent = set()

    def __iter__(self) -> Iterator[str]:
        for width, (_, blob) in self._packed.items():
            text = blob.decode()
            for i in range(0, len(text), width):
                yield text[i : i + width]
        yield from self._recent
        yield from self._other or ()


class SeenWindow:
    """Ids of published events, bucketed by created time so memory is rate x window.

    Two-phase use by the pipeline: `filter_new(batch)` picks the events to publish without
    changing anything; `mark(published)` records them as they are queued with the state that
    says so. A transaction that fails makes the pipeline rebuild the window from the state
    topic, so an aborted batch never hides its events from the retry.
    """

    __slots__ = ("_buckets", "_newest")

    def __init__(self) -> None:
        self._buckets: dict[int, SeenBucket] = {}
        self._newest: int | None = None

    def seen(self, event_id: str, created_ms: int | None = None) -> bool:
        """Whether `event_id` was added; give its `created_ms` to look in one bucket only
        (without it every bucket is searched, which costs a lookup per bucket).
        """
        if created_ms is not None:
            bucket = self._buckets.get(bucket_of(created_ms))
            return bucket is not None and event_id in bucket
        return any(event_id in b for b in self._buckets.values())

    def add(self, event_id: str, created_ms: int) -> bool:
        """Remembers an id; False when it was already there."""
        start = bucket_of(created_ms)
        bucket = self._buckets.get(start)
        if bucket is None:
            bucket = self._buckets[start] = SeenBucket()
        if not bucket.add(event_id):
            return False
        if self._newest is None or start > self._newest:
            previous, self._newest = self._newest, start
            # Events arrive about in created order, so a bucket two behind the newest gets
            # few more ids: pack it now rather than wait for its set to double. Each bucket
            # turns cold once; later stragglers wait for the doubling rule.
            if previous is not None:
                for b, cold in self._buckets.items():
                    if previous - BUCKET_MS <= b < start - BUCKET_MS:
                        cold.pack()
        return True

    def load(self, bucket: int, ids: Iterable[str]) -> None:
        """Adds many ids of the bucket starting at `bucket` at once (a state restore)."""
        start = bucket_of(bucket)
        target = self._buckets.get(start)
        if target is None:
            target = self._buckets[start] = SeenBucket()
        target.load(ids)
        if self._newest is None or start > self._newest:
            self._newest = start

    def prune(self, older_than_ms: int, keep: Sequence[tuple[int, int]] = ()) -> list[int]:
        """Forgets the buckets that end at or before `older_than_ms`, but for those that
        meet a [lo, hi) range of `keep`; returns their starts."""
        gone = [b for b in self._buckets if b + BUCKET_MS <= older_than_ms and not meets(b, keep)]
        for b in gone:
            del self._buckets[b]
        return gone

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def buckets(self) -> list[int]:
        """Starts of the buckets holding ids, oldest first."""
        return sorted(self._buckets)

    def ids(self, bucket: int) -> Iterator[str]:
        """The ids of the bucket starting at `bucket` (any order)."""
        return iter(self._buckets.get(bucket, ()))

    def oldest_ms(self) -> int | None:
        """Start of the oldest bucket holding ids (None when empty)."""
        return min(self._buckets, default=None)

    def filter_new(self, events: Iterable[Event]) -> tuple[list[Event], int]:
        """(events not seen before and not repeated earlier in this batch, duplicates count).

        Does not change the window: `mark` records the events once they are queued for
        commit (the pipeline does it together with the batch's state snapshot).
        """
        fresh: list[Event] = []
        batch: set[str] = set()
        duplicates = 0
        for event in events:
            if event.id in batch or self.seen(event.id, event.created_ms):
                duplicates += 1
                continue
            batch.add(event.id)
            fresh.append(event)
        return fresh, duplicates

    def mark(self, events: Iterable[Event]) -> None:
        """Remembers events as published. The pipeline marks them when it queues their batch,
        before the transaction commits: a failed transaction makes it rebuild every stream's
        state from the state topic, so an uncommitted mark never outlives its failure."""
        for event in events:
            self.add(event.id, event.created_ms)

    def __repr__(self) -> str:
        return f"SeenWindow({len(self)} ids in {len(self._buckets)} buckets)"


def meets(bucket: int, ranges: Sequence[tuple[int, int]]) -> bool:
    """Whether the bucket starting at `bucket` holds any time of a [lo, hi) range."""
    return any(lo < bucket + BUCKET_MS and bucket < hi for lo, hi in ranges)
