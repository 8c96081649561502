"""A small downstream consumer of the ingestor's topics: read_committed, a group, dedupe by id.

    python examples/consumer.py --bootstrap localhost:9092 --prefix stripe --group my-app

It subscribes to every event-type topic under the prefix (`<prefix>.<event type>`), leaving out
the DLQ, the optional `<prefix>.all` firehose (it repeats the type topics) and the ingestor's
own state topic. Each record becomes one `StripeEvent`, whether its value is a v1 event (Stripe's
JSON, unchanged) or a v2 envelope (thin event + hydrated related object), and `handle` sees each
event id once. Offsets are committed after the handler has run, so a crash repeats at most the
batch in flight: the in-memory `RecentIds` drops repeats within one run, and a handler whose
effects must survive restarts should also record the event id with them (a unique key).

Needs only aiokafka and its zstd extra (`pip install 'aiokafka[zstd]'`): the topics are
zstd-compressed by default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer


@dataclass(frozen=True, slots=True)
class StripeEvent:
    """One event as a consumer needs it, from either kind of value."""

    id: str
    type: str
    api: str  # "v1" (snapshot event) or "v2" (thin event)
    account: str | None  # None = the platform itself
    object: dict[str, Any] | None  # v1: data.object; v2: the related object when hydrated
    hydration: str | None  # v2 only: "ok", "not_found" or "failed"
    payload: dict[str, Any]  # v1: Stripe's event; v2: the thin event
    topic: str
    partition: int
    offset: int


class RecentIds:
    """The last `capacity` event ids seen, oldest forgotten first (bounded memory)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def first_time(self, event_id: str) -> bool:
        """True the first time an id is offered (and remembers it); False for a repeat."""
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return False
        self._ids[event_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True


def topic_pattern(prefix: str) -> str:
    """Every `<prefix>.<type>` topic, not `<prefix>.dlq`, `<prefix>.all` or the state topic."""
    return rf"^{re.escape(prefix)}\.(?!(?:dlq|all|_ingestor_state)$).+"


def decode(record: Any) -> StripeEvent:
    """A consumed record as a StripeEvent; the `source` header says which value shape it has."""
    headers = {key: value.decode() for key, value in record.headers or ()}
    value = json.loads(record.value)
    if headers.get("source") == "v2":
        thin = value["event"]
        return StripeEvent(
            id=thin["id"],
            type=thin["type"],
            api="v2",
            account=thin.get("context"),
            object=value.get("related_object"),
            hydration=value["hydration"]["status"],
            payload=thin,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
    return StripeEvent(
        id=value["id"],
        type=value["type"],
        api="v1",
        account=value.get("account"),
        object=value.get("data", {}).get("object"),
        hydration=None,
        payload=value,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
    )


@dataclass(slots=True)
class Counts:
    handled: int = 0
    repeats: int = 0


async def consume(
    bootstrap: str,
    prefix: str,
    group: str,
    handle: Callable[[StripeEvent], Awaitable[None]],
    *,
    stop: asyncio.Event | None = None,
    idle_seconds: float | None = None,
    recent: RecentIds | None = None,
) -> Counts:
    """Runs until `stop` is set, or (with `idle_seconds`) until nothing new arrived for that
    long after partitions were assigned; returns how many events were handled and skipped."""
    stop = stop or asyncio.Event()
    recent = recent or RecentIds()
    counts = Counts()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        # Only committed transactions: never an event the ingestor later aborted.
        isolation_level="read_committed",
        # A new group starts at the oldest retained record instead of only new ones.
        auto_offset_reset="earliest",
        # Commit by hand, after the handler ran: at-least-once handling, deduped below.
        enable_auto_commit=False,
        # The ingestor creates a topic when it first sees an event type; look for new topics
        # every 5 s instead of aiokafka's default 5 minutes.
        metadata_max_age_ms=5_000,
    )
    consumer.subscribe(pattern=topic_pattern(prefix))
    await consumer.start()
    try:
        last_activity: float | None = None
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            now = time.monotonic()
            if batches:
                last_activity = now
            elif consumer.assignment() and last_activity is None:
                last_activity = now  # the idle clock starts once there is something to read
            for records in batches.values():
                for record in records:
                    event = decode(record)
                    if recent.first_time(event.id):
                        await handle(event)
                        counts.handled += 1
                    else:
                        counts.repeats += 1
            if batches:
                await consumer.commit()
            if (
                idle_seconds is not None
                and last_activity is not None
                and now - last_activity > idle_seconds
            ):
                break
    finally:
        await consumer.stop()
    return counts


async def _print(event: StripeEvent) -> None:
    obj = event.object or {}
    status = obj.get("status") or event.hydration or ""
    account = event.account or "platform"
    print(f"{event.api} {event.id} {event.type} {obj.get('id', '-')} {account} {status}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bootstrap", default="localhost:9092")
    parser.add_argument("--prefix", default="stripe")
    parser.add_argument("--group", default="example-consumer")
    args = parser.parse_args()

    async def run() -> Counts:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await consume(args.bootstrap, args.prefix, args.group, _print, stop=stop)

    counts = asyncio.run(run())
    print(f"handled {counts.handled}, skipped {counts.repeats} repeats", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
