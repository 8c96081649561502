"""State records: exact round-trips, size bound, corruption detection, interval arithmetic."""

from __future__ import annotations

import base64
import itertools
import random
import string

import orjson
import pytest

from ingestor.errors import StateCorrupt
from ingestor.events import SourcePartition
from ingestor.state import (
    MAX_RECORD_BYTES,
    BackfillProgress,
    PartitionState,
    chunk_count,
    decode,
    decode_all,
    encode,
    encode_records,
    merge_intervals,
    state_key,
    subtract,
)

ALPHABET = string.ascii_letters + string.digits


def _id(rng: random.Random, n: int = 24) -> str:
    # base64 of random bytes with '+' and '/' swapped for letters: Stripe's id alphabet.
    raw = base64.b64encode(rng.randbytes(n), altchars=b"Qz").decode()
    return "evt_" + raw[:n]


def _random_state(rng: random.Random, n_seen: int) -> PartitionState:
    account = rng.choice([None, "acct_" + "".join(rng.choice(ALPHABET) for _ in range(16))])
    base = rng.randrange(1_600_000_000_000, 1_800_000_000_000)
    seen = {_id(rng, rng.randrange(1, 60)): base + rng.randrange(0, 600_000) for _ in range(n_seen)}
    backfill = None
    if rng.random() < 0.7:
        start = base - 30 * 86_400_000
        done = merge_intervals(
            (lo, lo + rng.randrange(1, 10_000_000))
            for lo in (rng.randrange(start, base) for _ in range(rng.randrange(0, 20)))
        )
        backfill = BackfillProgress(start, base, done, rng.random() < 0.5)
    return PartitionState(
        partition=SourcePartition(rng.choice(["v1", "v2"]), account),
        watermark_ms=rng.choice([None, base]),
        seen=seen,
        backfill=backfill,
        batch_seq=rng.randrange(0, 10**9),
        updated_ms=base + 1,
    )


def test_random_states_round_trip_exactly() -> None:
    rng = random.Random(20260101)
    for _ in range(200):
        state = _random_state(rng, rng.randrange(0, 300))
        value = encode(state)
        assert orjson.loads(value)["v"] == 1
        assert decode(state_key(state.partition), value) == state


def test_fifty_thousand_ids_fit_kafka_limits_and_round_trip() -> None:
    """Bound: every state record <= 512 KiB (half of Kafka's default 1 MB); big windows split."""
    rng = random.Random(7)
    account_part = "".join(rng.choice(ALPHABET) for _ in range(10))
    base = 1_770_000_000_000
    # Shaped like real v1 ids: "evt_1" + time part + account part + random part.
    seen = {
        f"evt_1{_id(rng, 5)[4:]}{account_part}{_id(rng, 8)[4:]}": base + (i // 80) * 1000
        for i in range(50_000)
    }
    state = PartitionState(SourcePartition("v1"), base + 600_000, seen, None, 3, base)
    records = encode_records(state)
    sizes = [len(v) for _, v in records if v is not None]
    assert all(size <= MAX_RECORD_BYTES for size in sizes)
    assert sum(sizes) < 1_000_000  # v1-shaped ids compress to well under 20 bytes each
    assert decode_all(dict(records)) == {state.partition: state}


def test_incompressible_ids_split_into_chunks_that_reassemble() -> None:
    rng = random.Random(8)
    state = _random_state(rng, 20_000)
    records = encode_records(state, max_bytes=64 * 1024)
    assert len(records) > 3
    assert all(v is not None and len(v) <= 64 * 1024 for _, v in records)
    head_key, head_value = records[0]
    assert head_key == state_key(state.partition)
    assert head_value is not None
    assert chunk_count(head_value) == len(records) - 1
    assert decode_all(dict(records))[state.partition] == state


def test_single_record_encode_refuses_a_state_that_needs_chunks() -> None:
    rng = random.Random(13)
    seen = {_id(rng): 1_000 + i for i in range(40_000)}
    state = PartitionState(SourcePartition("v2", "acct_1"), 1, seen)
    assert len(encode_records(state)) > 1
    with pytest.raises(ValueError, match="encode_records"):
        encode(state)


def test_shrinking_state_tombstones_chunks_no_longer_used() -> None:
    rng = random.Random(9)
    big = _random_state(rng, 5_000)
    records = encode_records(big, max_bytes=32 * 1024)
    previous = chunk_count(records[0][1] or b"")
    small = PartitionState(big.partition, 1, {"evt_x": 1}, None, big.batch_seq + 1, 2)
    after = encode_records(small, max_bytes=32 * 1024, previous_chunks=previous)
    assert len(after) == 1 + previous
    assert all(value is None for _, value in after[1:])
    latest = dict(records) | dict(after)
    assert decode_all(latest) == {small.partition: small}


def test_chunk_from_another_batch_is_corrupt_not_mixed() -> None:
    rng = random.Random(10)
    state = _random_state(rng, 5_000)
    old = dict(encode_records(state, max_bytes=32 * 1024))
    state.batch_seq += 1
    new = encode_records(state, max_bytes=32 * 1024)
    # A head whose chunks did not all arrive: only the head of the new batch is visible.
    mixed = old | {new[0][0]: new[0][1]}
    with pytest.raises(StateCorrupt, match="another batch"):
        decode_all(mixed)
    missing = {new[0][0]: new[0][1]}
    with pytest.raises(StateCorrupt, match="missing"):
        decode_all(missing)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (b"garbage", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"v": 2, "p": "v1:platform"}', "unknown version"),
        (b'{"p": "v1:platform"}', "unknown version"),
        (b'{"v": 1, "p": "v2:platform", "wm": 1, "seq": 1, "upd": 1, "seen": ""}', "holds"),
        (b'{"v": 1, "p": "v1:platform", "wm": "x", "seq": 1, "upd": 1, "seen": ""}', "bad"),
        (b'{"v": 1, "p": "v1:platform", "wm": 1, "seq": 1, "upd": 1}', "missing seen"),
        (b'{"v": 1, "p": "v1:platform", "wm": 1, "seq": 1, "upd": 1, "seen": "!!"}', "seen"),
        (
            b'{"v":1,"p":"v1:platform","wm":1,"seq":1,"upd":1,"seen":"eJyLjgUAARUAuQ==",'
            b'"bf":{"s":0,"e":9,"done":[[5,3]],"c":false}}',
            "backfill",
        ),
        (
            b'{"v":1,"p":"v1:platform","wm":1,"seq":1,"upd":1,"seen":"eJyLjgUAARUAuQ==",'
            b'"bf":{"s":0,"e":9,"done":[[1,3],[2,4]],"c":false}}',
            "backfill",
        ),
    ],
)
def test_garbage_or_unknown_versions_raise_state_corrupt(value: bytes, match: str) -> None:
    with pytest.raises(StateCorrupt, match=match):
        decode(b"v1:platform", value)


def test_bad_key_raises_state_corrupt() -> None:
    value = encode(PartitionState(SourcePartition("v1")))
    with pytest.raises(StateCorrupt, match="bad key"):
        decode(b"v3:nobody", value)


def test_empty_seen_window_sample_decodes() -> None:
    # "eJyLjgUAARUAuQ==" is deflate("[]"): the literal used in the corrupt cases above.
    value = b'{"v":1,"p":"v1:platform","wm":null,"seq":0,"upd":0,"seen":"eJyLjgUAARUAuQ=="}'
    assert decode(b"v1:platform", value) == PartitionState(SourcePartition("v1"))


def _covered(intervals: list[tuple[int, int]]) -> set[int]:
    return {x for lo, hi in intervals for x in range(lo, hi)}


def test_merge_intervals_matches_brute_force_on_random_inputs() -> None:
    rng = random.Random(11)
    for _ in range(500):
        raw = [(a, a + rng.randrange(-3, 12)) for a in (rng.randrange(0, 60) for _ in range(8))]
        merged = merge_intervals(raw)
        assert _covered(merged) == _covered(raw)
        assert all(lo < hi for lo, hi in merged)
        # Disjoint and not even touching: adjacent slices merge into one.
        assert all(a[1] < b[0] for a, b in itertools.pairwise(merged))


def test_subtract_matches_brute_force_on_random_inputs() -> None:
    rng = random.Random(12)
    for _ in range(500):
        whole = (rng.randrange(0, 30), rng.randrange(0, 80))
        done = [(a, a + rng.randrange(0, 15)) for a in (rng.randrange(-5, 80) for _ in range(6))]
        missing = subtract(whole, done)
        assert _covered(missing) == set(range(*whole)) - _covered(done)
        assert missing == merge_intervals(missing)


def test_backfill_progress_tracks_missing_slices_and_ratio() -> None:
    progress = BackfillProgress(0, 100)
    assert progress.missing() == [(0, 100)]
    progress.add_done(50, 60)
    progress.add_done(60, 70)
    progress.add_done(-10, 10)
    progress.add_done(95, 200)
    assert progress.done == [(0, 10), (50, 70), (95, 100)]
    assert progress.missing() == [(10, 50), (70, 95)]
    assert progress.ratio() == pytest.approx(0.35)
    assert BackfillProgress(5, 5).ratio() == 1.0
