"""Seen window: exact membership by bucket, packing, pruning by age, two-phase filter/mark."""

from __future__ import annotations

import random

import pytest

from ingestor import dedupe
from ingestor.dedupe import BUCKET_MS, PACK_MIN, SeenBucket, SeenWindow
from ingestor.events import Event

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


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


def _ids(rng: random.Random, n: int, width: int = 24) -> list[str]:
    return ["evt_" + "".join(rng.choices(BASE62, k=width)) for _ in range(n)]


def test_added_ids_are_seen_in_their_bucket_and_others_are_not() -> None:
    """An id is a member when asked with its created time (one bucket) or without (all)."""
    window = SeenWindow()
    assert window.add("evt_a", 1_000)
    assert not window.add("evt_a", 1_000)  # already there
    assert window.seen("evt_a", 1_000)
    assert window.seen("evt_a", 9_999)  # same bucket
    assert window.seen("evt_a")
    assert not window.seen("evt_b", 1_000)
    assert not window.seen("evt_b")
    assert len(window) == 1


def test_prune_forgets_whole_buckets_that_end_at_or_before_the_cutoff() -> None:
    """Buckets [0, 10 s) and [10 s, 20 s) go at a 20 s cutoff; [20 s, 30 s) stays."""
    window = SeenWindow()
    for created in (1_000, 12_000, 19_999, 20_000, 29_999):
        window.add(f"evt_{created}", created)
    assert window.prune(19_999) == [0]
    assert sorted(window.prune(2 * BUCKET_MS)) == [BUCKET_MS]
    assert not window.seen("evt_12000", 12_000)
    assert window.seen("evt_20000", 20_000)
    assert window.seen("evt_29999", 29_999)
    assert window.oldest_ms() == 2 * BUCKET_MS
    assert window.prune(10**9) == [2 * BUCKET_MS]
    assert len(window) == 0
    assert window.oldest_ms() is None


def test_packed_ids_stay_exact_members_and_near_misses_do_not() -> None:
    """After packing, every added id (any length, non-ASCII too) is found, and ids that differ
    by one character, or only in length, are not."""
    rng = random.Random(3)
    ids = _ids(rng, 5_000) + _ids(rng, 500, width=48) + ["evt_é_unicode", "evt_short"]
    bucket = SeenBucket()
    for x in ids:
        assert bucket.add(x)
    bucket.pack()
    assert len(bucket) == len(ids)
    assert all(x in bucket for x in ids)
    assert sorted(bucket) == sorted(ids)
    for x in ids[:500]:
        assert x[:-1] + ("0" if x[-1] != "0" else "1") not in bucket
        assert x[:-1] not in bucket
        assert x + "0" not in bucket
    assert not bucket.add(ids[0])  # a packed id is not added twice
    assert len(bucket) == len(ids)


def test_membership_stays_exact_when_every_hash_collides(monkeypatch: pytest.MonkeyPatch) -> None:
    """Packed lookups compare the ids' bytes, so even a hash shared by all ids never turns a
    new event into a duplicate (no probabilistic dedupe)."""
    monkeypatch.setattr(dedupe, "hash", lambda _: 7, raising=False)
    rng = random.Random(4)
    ids = _ids(rng, 300)
    bucket = SeenBucket()
    for x in ids:
        bucket.add(x)
    bucket.pack()
    assert all(x in bucket for x in ids)
    assert not any(x in bucket for x in _ids(rng, 300))


def test_a_hot_bucket_packs_as_it_grows_and_a_cold_one_when_the_window_moves_on() -> None:
    """A bucket's set of recent ids stays below max(PACK_MIN, packed); once the newest bucket
    is two ahead, an older bucket is packed whole."""
    rng = random.Random(5)
    window = SeenWindow()
    for x in _ids(rng, 10 * PACK_MIN):
        window.add(x, 1_000)
    hot = window._buckets[0]
    assert len(hot._recent) < max(PACK_MIN, hot._packed_count)
    window.add("evt_next", BUCKET_MS + 1)
    assert hot._recent  # one bucket ahead: still hot
    window.add("evt_later", 2 * BUCKET_MS + 1)
    assert not hot._recent
    assert hot._packed_count == 10 * PACK_MIN


def test_memory_stays_bounded_by_rate_times_window_over_100k_ids() -> None:
    """Pruning as time passes keeps only the ids of the window's buckets."""
    window = SeenWindow()
    window_ms = 10_000
    peak = 0
    for i in range(100_000):
        now = i  # one id per millisecond
        window.add(f"evt_{i}", now)
        if i % 100 == 0:
            window.prune(now - window_ms)
        peak = max(peak, len(window))
    assert peak <= window_ms + 2 * BUCKET_MS + 100
    assert len(window.buckets()) <= window_ms // BUCKET_MS + 3
    assert window.seen("evt_99999", 99_999)
    assert not window.seen("evt_0", 0)


def test_filter_new_drops_seen_and_in_batch_duplicates_without_mutating() -> None:
    """filter_new reports duplicates (seen or repeated in the batch) and records nothing."""
    window = SeenWindow()
    window.add("evt_old", 1_000)
    batch = [_event("evt_old"), _event("evt_1"), _event("evt_2"), _event("evt_1")]
    fresh, duplicates = window.filter_new(batch)
    assert [e.id for e in fresh] == ["evt_1", "evt_2"]
    assert duplicates == 2
    assert not window.seen("evt_1")  # nothing recorded before commit
    again, duplicates_again = window.filter_new(batch)
    assert [e.id for e in again] == ["evt_1", "evt_2"]
    assert duplicates_again == 2


def test_mark_after_commit_makes_a_re_read_free_of_duplicates() -> None:
    """Marked events are duplicates on the next read; new ones are not."""
    window = SeenWindow()
    batch = [_event("evt_1", 1_000), _event("evt_2", 12_000)]
    fresh, _ = window.filter_new(batch)
    window.mark(fresh)
    reread, duplicates = window.filter_new([*batch, _event("evt_3", 3_000)])
    assert [e.id for e in reread] == ["evt_3"]
    assert duplicates == 2
    assert sorted(window.ids(0)) == ["evt_1"]
    assert sorted(window.ids(BUCKET_MS)) == ["evt_2"]
