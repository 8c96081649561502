"""bench.targets: the tail watcher hides only aiokafka's retries on a leader not serving yet."""

from __future__ import annotations

import logging

from aiokafka.errors import NotLeaderForPartitionError, UnknownTopicOrPartitionError

from bench.targets import _new_leader_retry


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(
        "aiokafka.consumer.fetcher", logging.ERROR, __file__, 1, msg, args, None
    )


def test_leader_retry_is_dropped_and_every_other_error_kept() -> None:
    """The offset lookup's NotLeaderForPartition retry is dropped; another error in the same
    message, or another message, still reaches the log."""
    failed = "Failed fetch offsets from %s: %s"
    assert not _new_leader_retry(_record(failed, 1, NotLeaderForPartitionError()))
    assert _new_leader_retry(_record(failed, 1, UnknownTopicOrPartitionError()))
    assert _new_leader_retry(_record("Unexpected error in fetcher routine", 1))
