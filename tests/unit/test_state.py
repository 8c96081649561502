"""State-topic codec: exact round-trips, size bound per record, corruption detected."""

from __future__ import annotations

import base64
import random

import orjson
import pytest

from ingestor.errors import StateCorrupt
from ingestor.events import Stream
from ingestor.state import (
    CHUNK_ENTRIES,
    BackfillProgress,
    Head,
    chunk_key,
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


def test_chunks_of_realistic_ids_stay_far_below_kafkas_message_limit() -> None:
    rng = random.Random(1)
    entries = [(_id(rng), 1_700_000_000_000 + i) for i in range(CHUNK_ENTRIES * 2 + 1)]
    chunks = encode_chunks(entries)
    assert len(chunks) == 3
    assert max(len(c) for c in chunks) < 800_000
    p = Stream("v1")
    back = [e for n, c in enumerate(chunks) for e in decode_chunk(chunk_key(p, 0, n), c)]
    assert back == entries


def test_an_empty_bucket_still_encodes_one_chunk() -> None:
    assert [decode_chunk(b"k", c) for c in encode_chunks([])] == [[]]


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


def test_backfill_progress_is_complete_when_the_cursor_reaches_the_end() -> None:
    bf = BackfillProgress(1000, 5000, 3000)
    assert not bf.complete
    assert bf.ratio() == 0.5
    bf.cursor_ms = 5000
    assert bf.complete
    assert bf.ratio() == 1.0
