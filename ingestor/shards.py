"""Scale-out: accounts to shards by a stable hash, shards to processes by Kafka's group protocol."""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import structlog

from ingestor.errors import StatePartitionMismatch
from ingestor.events import Stream

log = structlog.get_logger(__name__)

# The platform's own streams hash as this name; an account id always starts with "acct_".
PLATFORM = "platform"


def shard_of(account: str | None, shards: int) -> int:
    """The shard an account's streams belong to: crc32 of the account id (the platform's
    streams: of "platform") modulo the shard count.

    crc32 is fixed by its standard (zlib's, IEEE 802.3), so every version of every process
    agrees; both APIs of an account land on one shard. Changing the shard count moves accounts,
    which is why a state topic's count is fixed (see `ensure_state_partitions`).
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    name = PLATFORM if account is None else account
    return zlib.crc32(name.encode("utf-8")) % shards


def streams_by_shard(streams: Iterable[Stream], shards: int) -> dict[int, list[Stream]]:
    """Every shard (0..shards-1, empty ones too) with its streams, in the order given."""
    out: dict[int, list[Stream]] = {n: [] for n in range(shards)}
    for stream in streams:
        out[shard_of(stream.account, shards)].append(stream)
    return out


def check_state_partitions(topic: str, partitions: int, shards: int) -> None:
    """Refuses a state topic whose partition count is not the shard count.

    Each shard writes its state to its own partition (partition n = shard n), and accounts map
    to shards by `shard_of(account, shards)`: with another count a shard would miss the state its
    accounts wrote before, and re-publish their events. A state topic written by a version
    before shards has 1 partition, so `kafka.shards = 1` keeps it working unchanged.
    """
    if partitions != shards:
        raise StatePartitionMismatch(
            f"state topic {topic!r} has {partitions} partition(s) but kafka.shards = {shards}: "
            f"set kafka.shards = {partitions} to keep this state (see README, Scale-out)"
        )
