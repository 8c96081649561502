"""Seen window: event ids already published inside the overlap window of one stream."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping

from ingestor.events import Event


class SeenWindow:
    """Event ids with their `created_ms`, pruned by age so memory is rate x window, not history.

    Two-phase use by the pipeline: `filter_new(batch)` picks the events to publish without
    changing anything; `mark(published)` records them only after their Kafka transaction
    committed, so an aborted transaction never hides events from the retry.
    """

    __slots__ = ("_created", "_heap")

    def __init__(self, items: Mapping[str, int] | Iterable[tuple[str, int]] = ()) -> None:
        self._created: dict[str, int] = {}
        # Min-heap on created_ms makes prune O(k log n) in the number removed; entries whose
        # id was re-added with another time are stale and skipped when popped.
        self._heap: list[tuple[int, str]] = []
        pairs = items.items() if isinstance(items, Mapping) else items
        for event_id, created_ms in pairs:
            self.add(event_id, created_ms)

    @classmethod
    def from_items(cls, items: Mapping[str, int] | Iterable[tuple[str, int]]) -> SeenWindow:
        """Rebuilds a window from `items()` / `to_dict()` output (state restore)."""
        return cls(items)

    def seen(self, event_id: str) -> bool:
        return event_id in self._created

    __contains__ = seen

    def add(self, event_id: str, created_ms: int) -> None:
        old = self._created.get(event_id)
        if old is not None and old >= created_ms:
            return
        self._created[event_id] = created_ms
        heapq.heappush(self._heap, (created_ms, event_id))

    def prune(self, older_than_ms: int) -> int:
        """Forgets ids whose created time is before `older_than_ms`; returns how many."""
        removed = 0
        heap = self._heap
        while heap and heap[0][0] < older_than_ms:
            created_ms, event_id = heapq.heappop(heap)
            if self._created.get(event_id) == created_ms:
                del self._created[event_id]
                removed += 1
        return removed

    def __len__(self) -> int:
        return len(self._created)

    def items(self) -> Iterator[tuple[str, int]]:
        """(event_id, created_ms) pairs, for the state record."""
        return iter(self._created.items())

    def to_dict(self) -> dict[str, int]:
        return dict(self._created)

    def oldest_ms(self) -> int | None:
        """Created time of the oldest remembered id (None when empty)."""
        heap = self._heap
        while heap and self._created.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def filter_new(self, events: Iterable[Event]) -> tuple[list[Event], int]:
        """(events not seen before and not repeated earlier in this batch, duplicates count).

        Does not change the window: call `mark` once the events are committed.
        """
        fresh: list[Event] = []
        batch: set[str] = set()
        duplicates = 0
        for event in events:
            if event.id in self._created or event.id in batch:
                duplicates += 1
                continue
            batch.add(event.id)
            fresh.append(event)
        return fresh, duplicates

    def mark(self, events: Iterable[Event]) -> None:
        """Remembers events whose Kafka transaction committed."""
        for event in events:
            self.add(event.id, event.created_ms)

    commit = mark

    def __repr__(self) -> str:
        return f"SeenWindow({len(self)} ids, oldest={self.oldest_ms()})"
