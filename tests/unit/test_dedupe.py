"""Seen window: membership, pruning by age, bounded memory, two-phase filter/mark."""

from __future__ import annotations

from ingestor.dedupe import SeenWindow
from ingestor.events import Event


def _event(event_id: str, created_ms: int = 1_000) -> Event:
    return Event(
        id=event_id,
        type="charge.succeeded",
        api="v1",
        account=None,
        created_ms=created_ms,
        livemode=False,
        api_version="2026-10-28.endive",
        object_id="ch_1",
        payload={"id": event_id},
    )


def test_added_ids_are_seen_and_others_are_not() -> None:
    window = SeenWindow()
    window.add("evt_a", 1_000)
    assert window.seen("evt_a")
    assert "evt_a" in window
    assert not window.seen("evt_b")
    assert len(window) == 1


def test_prune_drops_only_ids_created_before_the_cutoff() -> None:
    window = SeenWindow({"old": 1_000, "edge": 2_000, "new": 3_000})
    removed = window.prune(2_000)
    assert removed == 1
    assert not window.seen("old")
    assert window.seen("edge")
    assert window.seen("new")
    assert window.oldest_ms() == 2_000


def test_re_adding_an_id_with_a_later_time_keeps_it_until_that_time_is_pruned() -> None:
    window = SeenWindow()
    window.add("evt", 1_000)
    window.add("evt", 5_000)
    window.add("evt", 2_000)  # an older time never shortens the memory
    assert window.prune(3_000) == 0
    assert window.seen("evt")
    assert window.prune(6_000) == 1
    assert len(window) == 0
    assert window.oldest_ms() is None


def test_memory_stays_bounded_by_rate_times_window_over_100k_ids() -> None:
    window = SeenWindow()
    window_ms = 10_000
    rate_per_ms = 1  # one id per millisecond -> at most window_ms + 1 ids alive
    peak = 0
    for i in range(100_000):
        now = i // rate_per_ms
        window.add(f"evt_{i}", now)
        if i % 100 == 0:
            window.prune(now - window_ms)
        peak = max(peak, len(window))
    assert peak <= window_ms + 100 + 1
    assert len(window._heap) <= window_ms + 100 + 1  # the index is bounded too
    assert window.seen("evt_99999")
    assert not window.seen("evt_0")


def test_export_and_restore_round_trip() -> None:
    window = SeenWindow()
    for i in range(50):
        window.add(f"evt_{i}", 1_000 + i)
    restored = SeenWindow.from_items(window.items())
    assert restored.to_dict() == window.to_dict()
    assert SeenWindow.from_items(window.to_dict()).to_dict() == window.to_dict()
    restored.prune(1_025)
    assert len(restored) == 25


def test_filter_new_drops_seen_and_in_batch_duplicates_without_mutating() -> None:
    window = SeenWindow({"evt_old": 1_000})
    batch = [_event("evt_old"), _event("evt_1"), _event("evt_2"), _event("evt_1")]
    fresh, duplicates = window.filter_new(batch)
    assert [e.id for e in fresh] == ["evt_1", "evt_2"]
    assert duplicates == 2
    assert not window.seen("evt_1")  # nothing recorded before commit
    again, duplicates_again = window.filter_new(batch)
    assert [e.id for e in again] == ["evt_1", "evt_2"]
    assert duplicates_again == 2


def test_mark_after_commit_makes_a_re_read_free_of_duplicates() -> None:
    window = SeenWindow()
    batch = [_event("evt_1", 1_000), _event("evt_2", 2_000)]
    fresh, _ = window.filter_new(batch)
    window.mark(fresh)
    reread, duplicates = window.filter_new([*batch, _event("evt_3", 3_000)])
    assert [e.id for e in reread] == ["evt_3"]
    assert duplicates == 2
    assert window.to_dict() == {"evt_1": 1_000, "evt_2": 2_000}
