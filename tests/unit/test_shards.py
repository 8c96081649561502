"""Shard mapping: the stable account hash, its spread, and the state topic's partition check."""

from __future__ import annotations

import collections
import zlib

import pytest

from ingestor.errors import StatePartitionMismatch
from ingestor.events import Stream
from ingestor.shards import check_state_partitions, shard_of, streams_by_shard


def test_shard_of_is_pinned_to_crc32_of_the_account_id() -> None:
    """The mapping is crc32(account id, or "platform") mod shards, with these exact values: a
    change here moves accounts between shards and orphans their state, so it must fail a test."""
    assert shard_of(None, 8) == zlib.crc32(b"platform") % 8 == 3
    assert shard_of("acct_1", 8) == 1
    assert shard_of("acct_1Nv0FGQ9RKHgCVdK", 8) == 7
    assert [shard_of(f"acct_sim{i:04d}", 6) for i in range(8)] == [1, 3, 5, 3, 2, 4, 4, 4]


def test_one_shard_takes_every_account() -> None:
    """With one shard (the default) everything is shard 0: one process owns it all."""
    assert {shard_of(f"acct_{i}", 1) for i in range(100)} | {shard_of(None, 1)} == {0}


def test_shard_of_spreads_many_accounts_evenly() -> None:
    """10,000 account ids over 12 shards: every shard within 10% of the mean."""
    counts = collections.Counter(shard_of(f"acct_{i:016x}", 12) for i in range(10_000))
    mean = 10_000 / 12
    assert set(counts) == set(range(12))
    assert all(abs(c - mean) < 0.1 * mean for c in counts.values()), counts


def test_shard_of_refuses_no_shards() -> None:
    """A shard count below 1 is an error, not a division by zero."""
    with pytest.raises(ValueError, match="shards"):
        shard_of("acct_1", 0)


def test_both_apis_of_an_account_share_a_shard_and_empty_shards_are_listed() -> None:
    """streams_by_shard keeps v1 and v2 of one account together and lists every shard."""
    streams = [Stream(api, acct) for acct in (None, "acct_a", "acct_b") for api in ("v1", "v2")]
    by_shard = streams_by_shard(streams, 16)
    assert sorted(by_shard) == list(range(16))
    for acct in (None, "acct_a", "acct_b"):
        home = by_shard[shard_of(acct, 16)]
        assert Stream("v1", acct) in home
        assert Stream("v2", acct) in home
    assert sum(len(v) for v in by_shard.values()) == 6


def test_a_state_topic_with_another_partition_count_is_refused_with_the_fix() -> None:
    """A 1-partition state topic (written before shards) under kafka.shards = 4 is refused in
    one line that names the fix; a matching count passes."""
    check_state_partitions("p._ingestor_state", 4, 4)
    with pytest.raises(StatePartitionMismatch) as raised:
        check_state_partitions("p._ingestor_state", 1, 4)
    message = str(raised.value)
    assert "\n" not in message
    assert "has 1 partition(s) but kafka.shards = 4" in message
    assert "set kafka.shards = 1" in message
    assert not StatePartitionMismatch.retriable
