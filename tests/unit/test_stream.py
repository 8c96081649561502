"""Stream state: seen ids persisted in time buckets, restored exactly, pruned by age."""

from __future__ import annotations

import random

import orjson
import pytest

from ingestor.config import KafkaConfig

from ingestor.errors import StateCorrupt
from ingestor.events import Event, Stream
from ingestor.state import CHUNK_ENTRIES
from ingestor.sink import RECORD_OVERHEAD
from ingestor.stream import BUCKET_MS, BackfillProgress, StreamState

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

P = Stream("v1", "acct_123")


def ev(i: int, created_ms: int) -> Event:
    return Event(f"evt_{i}", "charge.updated", "v1", "acct_123", created_ms, False, None, "ch", {})


def apply(store: dict[bytes, bytes], snap: dict[bytes, bytes | None]) -> None:
    """What a compacted topic keeps: the latest value per key, tombstones delete."""
    for k, v in snap.items():
        if v is None:
            store.pop(k, None)
        else:
            store[k] = v


def test_snapshot_round_trips_cursor_seen_ids_and_backfill_progress() -> None:
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
    assert all(back.seen.seen(e.id) for e in events)
    assert len(back.seen) == 2000
    assert back.seq == rt.seq


def test_second_snapshot_rewrites_only_the_buckets_it_touched() -> None:
    rt = StreamState(P)
    rt.set_tail_start(0)
    rt.mark([ev(i, i * 1000) for i in range(60)])  # six 10 s buckets
    rt.snapshot()
    rt.mark([ev(100, 59_500)])
    snap = rt.snapshot()
    seen_keys = [k for k in snap if b"/seen/" in k]
    assert seen_keys == [rt.chunk_key(50_000, 0)]


def test_pruned_buckets_become_tombstones_and_memory_stays_bounded() -> None:
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
    assert len(rt.seen) <= (window_ms // 5_000 + 2 + BUCKET_MS // 5_000) * 100
    chunk_keys = [k for k in store if b"/seen/" in k]
    assert len(chunk_keys) <= window_ms // BUCKET_MS + 2
    back = StreamState.restore(store)[P]
    assert len(back.seen) == len(rt.seen)


def test_large_buckets_are_split_into_chunks_below_the_message_limit() -> None:
    rt = StreamState(P)
    rt.set_tail_start(0)
    rt.mark([ev(i, 5_000) for i in range(CHUNK_ENTRIES * 2 + 10)])
    snap = rt.snapshot()
    chunks = [v for k, v in snap.items() if b"/seen/" in k]
    assert len(chunks) == 3
    assert all(v is not None and len(v) < 1_000_000 for v in chunks)
    store: dict[bytes, bytes] = {}
    apply(store, snap)
    assert len(StreamState.restore(store)[P].seen) == CHUNK_ENTRIES * 2 + 10


def test_garbage_or_missing_chunks_raise_state_corrupt() -> None:
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


def test_an_unchanged_runtime_snapshots_nothing() -> None:
    rt = StreamState(P)
    rt.set_tail_start(0)
    rt.snapshot()
    assert rt.snapshot() == {}


def v2_id(rng: random.Random) -> str:
    """A real-length v2 (thin) event id: evt_test_ plus 48 base62 characters (57 in all)."""
    return "evt_test_" + "".join(rng.choices(BASE62, k=48))


def test_a_bucket_of_40k_real_length_v2_ids_fits_every_record_under_the_message_limit() -> None:
    """Finding 5: every state record of a bucket of 40,000 57-character v2 ids, key and record
    overhead included, stays within kafka.max_message_bytes (1 MB default), and restores exactly.
    """
    rng = random.Random(5)
    stream = Stream("v2")
    rt = StreamState(stream)
    rt.set_tail_start(0)
    ids = [v2_id(rng) for _ in range(40_000)]
    rt.mark(
        Event(
            i, "v1.billing.meter.error_report_triggered", "v2", None, 5_000, False, None, "mtr", {}
        )
        for i in ids
    )
    snap = rt.snapshot()
    limit = KafkaConfig().max_message_bytes
    sizes = [len(k) + len(v) + RECORD_OVERHEAD for k, v in snap.items() if v is not None]
    assert max(sizes) <= limit, max(sizes)
    store: dict[bytes, bytes] = {}
    apply(store, snap)
    back = StreamState.restore(store)[stream]
    assert all(back.seen.seen(i) for i in ids)
    assert len(back.seen) == 40_000
