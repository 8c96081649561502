"""Event storage: compact columns per event; per stream, sorted key arrays for O(log n) pages."""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_left, insort
from collections.abc import Callable
from dataclasses import dataclass, field

# A sort key packs (created ms, serial) into one int64: ms since 2020 above 24 bits of serial,
# so events sharing a millisecond keep their creation order and every key is unique.
BASE_MS = 1_577_836_800_000
SERIAL_BITS = 24
SERIAL_MASK = (1 << SERIAL_BITS) - 1
MAX_EVENTS = 1 << SERIAL_BITS


def sort_key(created_ms: int, serial: int) -> int:
    return ((created_ms - BASE_MS) << SERIAL_BITS) + serial


MAX_MS = BASE_MS + (1 << 39) - 1  # keys stay within int64 until 2037
MIN_MS = BASE_MS - (1 << 38)


def key_floor(created_ms: int) -> int:
    """The smallest key of any event created at or after `created_ms` (clamped to int64)."""
    return (min(max(created_ms, MIN_MS), MAX_MS) - BASE_MS) << SERIAL_BITS


@dataclass(slots=True)
class Stream:
    """One (account, api) source partition: keys of its visible events, ascending."""

    account: str | None
    api: str
    keys: array[int] = field(default_factory=lambda: array("q"))
    by_type: dict[int, array[int]] = field(default_factory=dict)

    def insert(self, key: int, type_ix: int) -> None:
        for keys in (self.keys, self.by_type.setdefault(type_ix, array("q"))):
            if not keys or keys[-1] < key:
                keys.append(key)
            else:
                insort(keys, key)


class EventStore:
    """Every event ever created (visible or still pending), as parallel columns by serial."""

    def __init__(self) -> None:
        self.created_ms: array[int] = array("q")
        self.type_ix: array[int] = array("H")
        self.obj: array[int] = array("q")
        self.version: array[int] = array("l")
        self.stream: array[int] = array("H")
        self.visible = bytearray()
        # When each event became (or becomes) listable: ground truth for lateness checks.
        self.visible_at: array[int] = array("q")
        self.visible_order: array[int] = array("q")
        self.streams: list[Stream] = []
        self._stream_ix: dict[tuple[str | None, str], int] = {}
        self.pending: list[tuple[int, int]] = []  # heap of (visible_at_ms, serial)

    def __len__(self) -> int:
        return len(self.created_ms)

    def stream_for(self, account: str | None, api: str, *, create: bool = True) -> int | None:
        ix = self._stream_ix.get((account, api))
        if ix is None and create:
            ix = len(self.streams)
            self.streams.append(Stream(account, api))
            self._stream_ix[(account, api)] = ix
        return ix

    def add(
        self, created_ms: int, type_ix: int, obj: int, version: int, stream: int, visible_at: int
    ) -> int:
        """Stores a new event; it joins its stream's index now or once `visible_at` passes."""
        serial = len(self.created_ms)
        if serial >= MAX_EVENTS:
            raise OverflowError("the simulator holds at most 16M events")
        self.created_ms.append(created_ms)
        self.type_ix.append(type_ix)
        self.obj.append(obj)
        self.version.append(version)
        self.stream.append(stream)
        self.visible.append(0)
        self.visible_at.append(max(visible_at, created_ms))
        if visible_at <= created_ms:
            self._show(serial)
        else:
            heapq.heappush(self.pending, (visible_at, serial))
        return serial

    def release(self, now_ms: int) -> int:
        """Makes every pending event whose time has come visible; returns how many."""
        count = 0
        while self.pending and self.pending[0][0] <= now_ms:
            self._show(heapq.heappop(self.pending)[1])
            count += 1
        return count

    def next_release_ms(self) -> int | None:
        return self.pending[0][0] if self.pending else None

    def _show(self, serial: int) -> None:
        self.visible[serial] = 1
        self.visible_order.append(serial)
        stream = self.streams[self.stream[serial]]
        stream.insert(sort_key(self.created_ms[serial], serial), self.type_ix[serial])

    def key(self, serial: int) -> int:
        return sort_key(self.created_ms[serial], serial)

    def select(
        self,
        indexes: list[array[int]],
        lo: int,
        hi: int,
        limit: int,
        *,
        ascending: bool,
        accept: Callable[[int], bool] | None = None,
    ) -> tuple[list[int], bool]:
        """Serials of up to `limit` events with keys in [lo, hi), nearest `lo` when ascending
        else nearest `hi`; returned newest first, plus whether more lie beyond the page."""
        want = limit + 1
        found: list[int] = []
        for keys in indexes:
            i, j = bisect_left(keys, lo), bisect_left(keys, hi)
            if accept is not None:
                found.extend(_scan(keys, i, j, want, ascending, accept))
            elif ascending:
                found.extend(keys[i : min(j, i + want)])
            else:
                found.extend(keys[max(i, j - want) : j])
        found.sort()
        page = found[:want] if ascending else found[-want:]
        has_more = len(page) > limit
        if has_more:
            page = page[:limit] if ascending else page[1:]
        page.reverse()
        return [k & SERIAL_MASK for k in page], has_more


def _scan(
    keys: array[int], i: int, j: int, want: int, ascending: bool, accept: Callable[[int], bool]
) -> list[int]:
    # The slow path for filters with no index (v2 object_id): walk outward from the cursor.
    out: list[int] = []
    rng = range(i, j) if ascending else range(j - 1, i - 1, -1)
    for p in rng:
        k = keys[p]
        if accept(k & SERIAL_MASK):
            out.append(k)
            if len(out) >= want:
                break
    return out
