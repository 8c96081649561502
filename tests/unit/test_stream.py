"""Stream state: seen ids persisted in time buckets, restored exactly, pruned by age."""

from __future__ import annotations

import base64
import random
import tracemalloc
from dataclasses import dataclass

import orjson
import pytest

from ingestor.config import KafkaConfig
from ingestor.errors import StateCorrupt
from ingestor.events import Event, Record, Stream
from ingestor.pipeline import _known
from ingestor.route import record_size
from ingestor.state import encode_head
from ingestor.stream import (
    BUCKET_MS,
    COMPACT_CHUNKS,
    BackfillProgress,
    StreamState,
    merge_ranges,
)

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
P = Stream("v1", "acct_123")


@dataclass(frozen=True, slots=True)
class Seen:
    id: str
    created_ms: int


def ev(i: int, created_ms: int) -> Event:
    return Event(f"evt_{i}", "charge.updated", "v1", "acct_123", created_ms, False, None, "ch", {})


def v1_id(rng: random.Random) -> str:
    """A real-length v1 event id: evt_ plus 24 base62 characters (28 in all)."""
    return "evt_" + "".join(rng.choices(BASE62, k=24))


def v2_id(rng: random.Random) -> str:
    """A real-length v2 (thin) event id: evt_test_ plus 48 base62 characters (57 in all)."""
    return "evt_test_" + "".join(rng.choices(BASE62, k=48))


def apply(store: dict[bytes, bytes], snap: dict[bytes, bytes | None]) -> None:
    """What a compacted topic keeps: the latest value per key, tombstones delete."""
    for k, v in snap.items():
        if v is None:
            store.pop(k, None)
        else:
            store[k] = v


def chunk_ids(snap: dict[bytes, bytes | None]) -> list[str]:
    return [i for k, v in snap.items() if b"/seen/" in k and v for i in orjson.loads(v)["ids"]]


def test_snapshot_round_trips_cursor_seen_ids_and_backfill_progress() -> None:
    """Cursor, backfill progress and every seen id survive snapshot then restore."""
    rt = StreamState(P)
    rt.set_tail_start(1_000_000)
    rt.set_backfill(BackfillProgress(0, 1_000_000, 250_000))
    events = [ev(i, 1_000_000 + i * 37) for i in range(2000)]
    rt.mark(events)
    rt.advance_watermark(events[-1].created_ms)
    store: dict[bytes, bytes] = {}
    apply(store, rt.snapshot())
    back = StreamState.restore(store)[P]
    assert back.tail_start_ms == 1_000_000
    assert back.watermark_ms == events[-1].created_ms
    assert back.backfill == BackfillProgress(0, 1_000_000, 250_000)
    assert all(back.has_seen(e.id, e.created_ms) for e in events)
    assert all(back.seen.seen(e.id) for e in events[:50])  # the id-only lookup still works
    assert not back.has_seen("evt_other", events[0].created_ms)
    assert back.seen_count == 2000
    assert back.seq == rt.seq


def test_a_second_snapshot_appends_only_the_new_ids_of_the_buckets_it_touched() -> None:
    """A commit writes a new chunk holding just the ids it added; older chunks stay as they are."""
    rt = StreamState(P)
    rt.set_tail_start(0)
    rt.mark([ev(i, i * 1000) for i in range(60)])  # six 10 s buckets
    rt.snapshot()
    rt.mark([ev(100, 59_500), ev(5, 5_000)])  # one new id, one already seen
    snap = rt.snapshot()
    assert [k for k in snap if b"/seen/" in k] == [rt.chunk_key(50_000, 1)]
    assert chunk_ids(snap) == ["evt_100"]


def test_snapshot_of_a_30k_bucket_that_got_300_ids_writes_only_those() -> None:
    """At 3,000 events/s a bucket holds 30k ids; a commit adding 300 writes ~300 ids' worth,
    not the whole bucket (which would be ~1 MB per commit, several times a second)."""
    rng = random.Random(8)
    rt = StreamState(P)
    rt.set_tail_start(0)
    rt.mark(Seen(v1_id(rng), 5_000) for _ in range(30_000))
    rt.snapshot()
    new = [v1_id(rng) for _ in range(300)]
    rt.mark(Seen(i, 5_000) for i in new)
    snap = rt.snapshot()
    assert sorted(chunk_ids(snap)) == sorted(new)
    assert sum(len(v) for v in snap.values() if v is not None) < 300 * 31 + 1_000


def test_a_bucket_with_many_appended_chunks_is_rewritten_into_few_and_restores() -> None:
    """Append-only chunks do not pile up: past COMPACT_CHUNKS a bucket is rewritten whole,
    its surplus chunks are deleted, and the restored window is exact."""
    rng = random.Random(9)
    rt = StreamState(P)
    rt.set_tail_start(0)
    store: dict[bytes, bytes] = {}
    ids: list[str] = []
    most = 0
    for _ in range(3 * COMPACT_CHUNKS):
        batch = [v1_id(rng) for _ in range(50)]
        ids += batch
        rt.mark(Seen(i, 5_000) for i in batch)
        apply(store, rt.snapshot())
        most = max(most, sum(1 for k in store if b"/seen/" in k))
    assert most <= COMPACT_CHUNKS + 1
    assert rt.head.buckets[0] == sum(1 for k in store if b"/seen/" in k)
    back = StreamState.restore(store)[P]
    assert back.seen_count == len(ids)
    assert all(back.has_seen(i, 5_000) for i in ids)


def test_pruned_buckets_become_tombstones_and_memory_stays_bounded() -> None:
    """Old buckets leave memory and the state topic; what remains restores exactly."""
    rt = StreamState(P)
    rt.set_tail_start(0)
    store: dict[bytes, bytes] = {}
    window_ms = 60_000
    for step in range(200):
        now = step * 5_000
        rt.mark([ev(step * 100 + j, now + j) for j in range(100)])
        rt.advance_watermark(now + 99)
        rt.prune(now - window_ms)
        apply(store, rt.snapshot())
    # 200 steps x 100 ids were seen; only about window/step x 100 may remain.
    assert rt.seen_count <= (window_ms // 5_000 + 2 + BUCKET_MS // 5_000) * 100
    buckets = {k.rsplit(b"/", 2)[1] for k in store if b"/seen/" in k}
    assert len(buckets) <= window_ms // BUCKET_MS + 2
    back = StreamState.restore(store)[P]
    assert back.seen_count == rt.seen_count


def test_a_pruned_bucket_that_gets_ids_again_keeps_its_new_chunk() -> None:
    """A bucket pruned and then marked again (an event older than the horizon) writes a chunk
    the tombstones of its old chunks must not delete, so the state still restores."""
    rt = StreamState(P)
    rt.set_tail_start(0)
    store: dict[bytes, bytes] = {}
    rt.mark([ev(1, 1_000)])
    apply(store, rt.snapshot())
    rt.prune(50_000)
    rt.mark([ev(2, 2_000)])
    apply(store, rt.snapshot())
    back = StreamState.restore(store)[P]
    assert back.has_seen("evt_2", 2_000)
    assert not back.has_seen("evt_1", 1_000)


def test_a_bucket_of_40k_real_length_v2_ids_fits_every_record_under_the_message_limit() -> None:
    """Finding 5: every state record of a bucket of 40,000 57-character v2 ids, key and record
    overhead included, stays within kafka.max_message_bytes (1 MB default), and restores exactly.
    """
    rng = random.Random(5)
    stream = Stream("v2")
    rt = StreamState(stream)
    rt.set_tail_start(0)
    ids = [v2_id(rng) for _ in range(40_000)]
    rt.mark(Seen(i, 5_000) for i in ids)
    snap = rt.snapshot()
    limit = KafkaConfig().max_message_bytes
    sizes = [record_size(Record("state", k, v)) for k, v in snap.items() if v is not None]
    assert max(sizes) <= limit, max(sizes)
    store: dict[bytes, bytes] = {}
    apply(store, snap)
    back = StreamState.restore(store)[stream]
    assert all(back.has_seen(i, 5_000) for i in ids)
    assert back.seen_count == 40_000


def test_chunks_follow_a_small_configured_max_message_bytes() -> None:
    """With kafka.max_message_bytes = 2048 every state record, the head included, fits it."""
    rng = random.Random(6)
    stream = Stream("v2", "acct_1Nv0FGQ9RKHgCVdK")
    rt = StreamState(stream, max_message_bytes=2048)
    rt.set_tail_start(0)
    ids = [v2_id(rng) for _ in range(2_000)]
    rt.mark(Seen(i, 5_000 + n) for n, i in enumerate(ids))
    snap = rt.snapshot()
    assert max(record_size(Record("state", k, v)) for k, v in snap.items() if v) <= 2048
    store: dict[bytes, bytes] = {}
    apply(store, snap)
    back = StreamState.restore(store, max_message_bytes=2048)[stream]
    assert back.seen_count == 2_000


def test_a_state_topic_written_with_version_1_chunks_restores_and_keeps_growing() -> None:
    """Existing state topics hold [id, created_ms] chunks: they restore, and new ids append
    chunks of the new format after them."""
    head = StreamState(P).head
    head.tail_start_ms = 0
    head.buckets = {10_000: 1}
    store = {
        P.key.encode(): encode_head(head),
        P.key.encode() + b"/seen/10000/0": orjson.dumps(
            {"v": 1, "e": [["evt_a", 10_500], ["evt_b", 19_999]]}
        ),
    }
    rt = StreamState.restore(store)[P]
    assert rt.has_seen("evt_a", 10_500)
    assert rt.has_seen("evt_b", 19_999)
    rt.mark([ev(7, 11_000)])
    apply(store, rt.snapshot())
    back = StreamState.restore(store)[P]
    assert sorted(back.seen.ids(10_000)) == ["evt_7", "evt_a", "evt_b"]


def test_seen_ids_cost_less_than_100_bytes_each_in_memory() -> None:
    """Finding 8: 100k real-length v1 ids over 10 buckets, marked and snapshotted as commits
    do, hold < 100 bytes each of Python heap, strings included (~40 measured). The three
    copies per id this replaced cost ~276 bytes each: 1.8M ids (10 minutes at 3,000 events/s)
    needed ~500 MB."""
    rng = random.Random(10)
    ids = [
        "evt_" + base64.b64encode(rng.randbytes(18), altchars=b"Qz").decode()
        for _ in range(100_000)
    ]
    rt = StreamState(P)
    rt.set_tail_start(0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        # Copies made while tracing, so the ids the state keeps are counted too.
        for n in range(0, len(ids), 1_000):
            created = 1_700_000_000_000 + n // 10_000 * BUCKET_MS
            rt.mark(Seen(i.encode().decode(), created) for i in ids[n : n + 1_000])
            rt.snapshot()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert rt.seen_count == len(ids)
    assert len(ids[0]) == 28
    assert used / len(ids) < 100, used / len(ids)


def test_garbage_or_missing_chunks_raise_state_corrupt() -> None:
    """A damaged head, a missing chunk or an unknown version stops the restore."""
    with pytest.raises(StateCorrupt):
        StreamState.restore({P.key.encode(): b"{not json"})
    rt = StreamState(P)
    rt.set_tail_start(0)
    rt.mark([ev(1, 1)])
    store: dict[bytes, bytes] = {}
    apply(store, rt.snapshot())
    del store[rt.chunk_key(0, 0)]
    with pytest.raises(StateCorrupt):
        StreamState.restore(store)
    bad_version = orjson.loads(store[P.key.encode()])
    bad_version["v"] = 99
    with pytest.raises(StateCorrupt):
        StreamState.restore({P.key.encode(): orjson.dumps(bad_version)})
    bad_owed = orjson.loads(store[P.key.encode()])
    for owed in ([[1, 2, 3]], [["1", 2]], 7):
        bad_owed["owed"] = owed
        with pytest.raises(StateCorrupt):
            StreamState.restore({P.key.encode(): orjson.dumps(bad_owed)})


def test_an_unchanged_runtime_snapshots_nothing() -> None:
    """No change since the last snapshot writes no record."""
    rt = StreamState(P)
    rt.set_tail_start(0)
    rt.snapshot()
    assert rt.snapshot() == {}


def test_a_finished_sweep_bounds_the_next_one_by_its_start_and_the_read_through_time() -> None:
    """The next sweep's bound never passes what no read has gone through: it follows the
    sweep's start while polls keep up, the read-through time while they lag behind it, stays
    put before any read went through, and never moves back."""
    rt = StreamState(Stream("v2", None))
    rt.set_tail_start(0)
    window = 600_000
    rt.finish_sweep(5_000_000, window)
    assert rt.sweep_lo_ms == 0  # nothing read through yet
    rt.set_read_through(4_999_000)
    rt.finish_sweep(5_000_000, window)
    assert rt.sweep_lo_ms == 4_999_000 - window  # polls keep up: about the sweep's start
    rt.finish_sweep(9_000_000, window)  # polls lag an hour behind the sweeps
    assert rt.sweep_lo_ms == 4_999_000 - window
    rt.set_read_through(6_000_000)
    rt.finish_sweep(5_500_000, window)
    assert rt.sweep_lo_ms == 5_500_000 - window
    rt.set_read_through(7_000_000)
    rt.finish_sweep(4_000_000, window)  # an older start never moves it back
    assert rt.sweep_lo_ms == 5_500_000 - window


def test_a_tail_read_skips_only_published_events_at_or_before_the_watermark() -> None:
    """`pipeline._known`, the tail reads' skip: a published event created at or before the
    watermark is skipped; one created after it is not (leaving it out could hold the
    watermark back: a webhook-pushed event is published before any poll lists it), nor an
    unpublished one, nor anything before the stream has a watermark."""
    rt = StreamState(P)
    old, newer = Seen("evt_old", 1_000_000), Seen("evt_newer", 1_005_000)
    assert not _known(rt, old.id, old.created_ms)
    rt.set_tail_start(900_000)
    rt.mark([old, newer])
    rt.advance_watermark(1_002_000)
    assert _known(rt, old.id, old.created_ms)
    assert not _known(rt, newer.id, newer.created_ms)
    assert not _known(rt, "evt_other", old.created_ms)
    rt.advance_watermark(newer.created_ms)
    assert _known(rt, newer.id, newer.created_ms)


def test_owed_ranges_merge_when_they_touch_and_stay_few_however_many_restarts() -> None:
    """Owed restart ranges are kept sorted and disjoint; past the limit the two closest merge
    into one that covers both (re-reading more is safe), so a crash loop cannot grow the head
    record without bound and never drops a range."""
    assert merge_ranges([(50, 60), (0, 10), (10, 20), (15, 30), (40, 40)], 8) == [
        (0, 30),
        (50, 60),
    ]
    ranges = [(i * 100, i * 100 + 10 + i) for i in range(20)]
    merged = merge_ranges(ranges, 8)
    assert len(merged) == 8
    assert merged == sorted(merged)
    for lo, hi in ranges:
        assert any(a <= lo and hi <= b for a, b in merged)


def test_pruning_keeps_the_owed_ranges_and_forgets_the_settled_stretch_between() -> None:
    """Seed 300: a single cutoff at the oldest owed range kept every id from before an
    hour's stop to now (142k in one stream against 28k before the stop). Ids no read can
    return again, those between an owed range and the next sweep's bound, are forgotten;
    the owed range's stay for the restart sweep that dedupes against them."""
    rt = StreamState(Stream("v1", None))
    rt.set_tail_start(0)
    hour = 3_600_000
    rt.set_sweep_lo(hour)
    rt.advance_watermark(hour + 600_000)
    owed = rt.owe_restart_sweep(5_000, 600_000)
    assert owed == [(hour, hour + 595_000)]
    # The catch-up read 2 hours after the stop, and settled it up to a window behind.
    events = [
        Event(f"evt_{t}", "charge.updated", "v1", None, t, False, None, "ch", {})
        for t in range(hour, 4 * hour, 60_000)
    ]
    rt.mark(events)
    rt.advance_watermark(4 * hour)
    rt.set_read_through(4 * hour)
    rt.settle(4 * hour, 600_000)
    rt.prune_unread(5_000, 600_000)
    kept = {e.created_ms for e in events if rt.has_seen(e.id, e.created_ms)}
    assert {t for t in kept if t < hour + 600_000} == set(range(hour, hour + 600_000, 60_000))
    assert min(t for t in kept if t >= hour + 600_000) >= 4 * hour - 600_000 - 10_000
    # The webhook intake's horizon still counts the owed range as unread, and an event in
    # the stretch forgotten after it as settled (it is not seen, and must not be published
    # again).
    assert rt.intake_horizon(hour + 60_000, 5_000, 600_000) < hour
    assert rt.intake_horizon(2 * hour, 5_000, 600_000) > 2 * hour
    assert not rt.has_seen(f"evt_{2 * hour}", 2 * hour)
