"""State-topic codec: exact round-trips, size bound per record, corruption detected."""

from __future__ import annotations

import base64
import random

import orjson
import pytest

from ingestor.config import KafkaConfig
from ingestor.errors import IngestorError, StateCorrupt
from ingestor.events import Record, Stream
from ingestor.route import record_size
from ingestor.state import (
    BackfillProgress,
    Head,
    chunk_key,
    chunk_value_limit,
    decode_chunk,
    decode_head,
    encode_chunks,
    encode_head,
    head_key,
    is_head_key,
)


def _id(rng: random.Random) -> str:
    # Stripe ids are evt_ plus 24 base62-ish characters.
    return "evt_" + base64.b64encode(rng.randbytes(18), altchars=b"Qz").decode()


def _random_head(rng: random.Random) -> Head:
    account = rng.choice([None, f"acct_{rng.randrange(10**15)}"])
    base = rng.randrange(1_600_000_000_000, 1_800_000_000_000)
    backfill = None
    if rng.random() < 0.7:
        start = base - 30 * 86_400_000
        backfill = BackfillProgress(start, base, rng.randrange(start, base + 1))
    return Head(
        stream=Stream(rng.choice(["v1", "v2"]), account),
        seq=rng.randrange(0, 10**9),
        tail_start_ms=rng.choice([None, base]),
        watermark_ms=rng.choice([None, base + rng.randrange(10**6)]),
        backfill=backfill,
        buckets={base + i * 10_000: rng.randrange(1, 4) for i in range(rng.randrange(0, 70))},
    )


def test_random_heads_round_trip_exactly() -> None:
    rng = random.Random(7)
    for _ in range(300):
        head = _random_head(rng)
        assert decode_head(head_key(head.stream), encode_head(head)) == head


def _v2_id(rng: random.Random) -> str:
    # Real v2 (thin) event ids: evt_test_ plus 48 base62 characters, 57 in all.
    return "evt_test_" + base64.b64encode(rng.randbytes(36), altchars=b"Qz").decode()


def test_40k_real_length_v2_ids_encode_into_chunks_under_the_limit_and_decode_exactly() -> None:
    """Chunks are sized in bytes: 40,000 57-character ids (~2.4 MB) split into chunks whose
    records, key and framing included, fit kafka.max_message_bytes, in as few as fit."""
    rng = random.Random(1)
    ids = [_v2_id(rng) for _ in range(40_000)]
    assert len(ids[0]) == 57
    p = Stream("v2", "acct_1Nv0FGQ9RKHgCVdK")
    limit = KafkaConfig().max_message_bytes
    chunks = encode_chunks(ids, chunk_value_limit(p, limit))
    keys = [chunk_key(p, 1_700_000_000_000, n) for n in range(len(chunks))]
    assert (
        max(record_size(Record("state", k, c)) for k, c in zip(keys, chunks, strict=True)) <= limit
    )
    assert len(chunks) <= -(-sum(len(c) for c in chunks) * 11 // (limit * 10)) + 1
    back = [e for k, c in zip(keys, chunks, strict=True) for e in decode_chunk(k, c)]
    assert back == ids


@pytest.mark.parametrize("max_bytes", [700, 4_096, 65_536])
def test_chunks_of_ids_of_any_length_never_exceed_max_bytes(max_bytes: int) -> None:
    """Ids of 5 to 300 characters, quotes and non-ASCII included, stay under any limit."""
    rng = random.Random(max_bytes)
    alphabet = 'abcXYZ019_"\\é€'
    ids = ["".join(rng.choices(alphabet, k=rng.randrange(5, 300))) for _ in range(3_000)]
    chunks = encode_chunks(ids, max_bytes)
    assert max(len(c) for c in chunks) <= max_bytes
    assert [e for c in chunks for e in decode_chunk(b"k", c)] == ids


def test_an_id_that_cannot_fit_any_record_is_refused_rather_than_sent() -> None:
    """An id larger than a whole record raises instead of producing a record Kafka rejects."""
    with pytest.raises(IngestorError, match="cannot fit a state record"):
        encode_chunks(["evt_ok", "x" * 900], 700)


def test_no_ids_encode_no_chunks() -> None:
    """Nothing to write makes no record."""
    assert encode_chunks([], 1_000) == []


def test_version_1_chunks_of_id_and_created_entries_still_decode() -> None:
    """State topics written before chunks held ids only restore: [id, created_ms] entries."""
    old = orjson.dumps({"v": 1, "e": [["evt_a", 1_700_000_000_000], ["evt_b", 1]]})
    assert decode_chunk(b"k", old) == ["evt_a", "evt_b"]


def test_head_and_chunk_keys_are_told_apart() -> None:
    p = Stream("v2", "acct_9")
    assert is_head_key(head_key(p))
    assert not is_head_key(chunk_key(p, 10_000, 0))


@pytest.mark.parametrize(
    "value",
    [b"", b"{oops", b"[]", b'{"v": 2}', orjson.dumps({"v": 1, "partition": "v1:platform"})],
)
def test_garbage_or_unknown_versions_raise_state_corrupt(value: bytes) -> None:
    with pytest.raises(StateCorrupt):
        decode_head(b"v1:platform", value)


def test_a_head_filed_under_another_stream_is_corrupt() -> None:
    head = Head(Stream("v1"), seq=3)
    with pytest.raises(StateCorrupt, match="names stream"):
        decode_head(b"v2:platform", encode_head(head))


def test_missing_or_damaged_chunks_raise_state_corrupt() -> None:
    with pytest.raises(StateCorrupt, match="missing"):
        decode_chunk(b"v1:platform/seen/0/0", None)
    with pytest.raises(StateCorrupt):
        decode_chunk(b"v1:platform/seen/0/0", b'{"v":1,"e":[["evt_1","x"]]}')
    with pytest.raises(StateCorrupt):
        decode_chunk(b"v1:platform/seen/0/0", b'{"v":2,"ids":[1]}')
    with pytest.raises(StateCorrupt, match="unknown chunk version"):
        decode_chunk(b"v1:platform/seen/0/0", b'{"v":3,"ids":[]}')


def test_backfill_progress_is_complete_when_the_cursor_reaches_the_end() -> None:
    bf = BackfillProgress(1000, 5000, 3000)
    assert not bf.complete
    assert bf.ratio() == 0.5
    bf.cursor_ms = 5000
    assert bf.complete
    assert bf.ratio() == 1.0
