"""The only module that touches aiokafka's private internals, behind a check of its version."""

from __future__ import annotations

import asyncio
from typing import Any

import aiokafka
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from ingestor.errors import IncompatibleDependency

# The private attributes below (`_message_accumulator`, its `_batches` / `_pending_batches`,
# a batch's `_drain_waiter`, `_txn_manager._transaction_waiter`) were read in this version.
AIOKAFKA_VERSION = "0.14.0"


def check_aiokafka_version(installed: str | None = None) -> None:
    """Refuses to run on an aiokafka whose internals this module was not written against."""
    version = aiokafka.__version__ if installed is None else installed
    if version != AIOKAFKA_VERSION:
        raise IncompatibleDependency(
            f"aiokafka {version} is installed, but the Kafka writer relies on internals of "
            f"aiokafka {AIOKAFKA_VERSION}: install aiokafka=={AIOKAFKA_VERSION} "
            "(pinned in pyproject.toml), or re-check ingestor/log/kafka_private.py against "
            f"{version} and update AIOKAFKA_VERSION"
        )


def fail_pending(producer: AIOKafkaProducer) -> None:
    """Fails every record a discarded producer still holds instead of letting stop() flush it.

    aiokafka's stop() first flushes pending records, which with idempotence never expire; a
    discarded producer's records belong to an aborted or unknown transaction, so they are failed.
    The failures land in internal futures nobody awaits (a failed batch's drain waiter, the
    transaction waiter); they are marked as seen so discarding a producer does not log one
    "Future exception was never retrieved" traceback per partition. Best effort by design.
    """
    accumulator: Any = getattr(producer, "_message_accumulator", None)
    if accumulator is None:
        return
    accumulator.fail_all(KafkaConnectionError("producer discarded"))
    batches = [b for queue in getattr(accumulator, "_batches", {}).values() for b in queue]
    batches += list(getattr(accumulator, "_pending_batches", ()))
    waiters = [getattr(b, "_drain_waiter", None) for b in batches]
    txn_manager = getattr(producer, "_txn_manager", None)
    waiters.append(getattr(txn_manager, "_transaction_waiter", None))
    for waiter in waiters:
        if isinstance(waiter, asyncio.Future) and waiter.done() and not waiter.cancelled():
            waiter.exception()


__all__ = ["AIOKAFKA_VERSION", "check_aiokafka_version", "fail_pending"]
