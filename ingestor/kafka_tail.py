"""`ingestor tail`: prints what was published under a prefix, as read_committed consumers see it."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ingestor.config import KafkaConfig
from ingestor.errors import KafkaUnavailable, TailIncomplete

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


@dataclass(slots=True)
class TopicSummary:
    count: int = 0
    sample_key: str = ""
    partitions: set[int] = field(default_factory=set)


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(raw).decode("ascii")


def _value(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _text(raw)


def record_json(record: Any) -> bytes:
    """One consumer record as a JSON line: topic, partition, offset, key, headers, value."""
    doc = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": _text(record.key),
        "headers": {k: _text(v) for k, v in (record.headers or ())},
        "value": _value(record.value),
    }
    return orjson.dumps(doc) + b"\n"


async def read_all(
    bootstrap: str,
    prefix: str,
    on_record: Callable[[Any], None],
    *,
    max_seconds: float = 60.0,
) -> int:
    """Reads every `<prefix>.*` topic except the state topic, beginning to end offsets.

    read_committed: aborted transactions never show, exactly what downstream consumers see.
    Returns the number of records; TailIncomplete when the deadline passes first.
    """
    state_topic = KafkaConfig(topic_prefix=prefix).state_topic
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    count = 0
    try:
        async with asyncio.timeout(max_seconds):
            try:
                await consumer.start()
            except (KafkaError, OSError) as exc:
                raise KafkaUnavailable(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
            tps = await _partitions(bootstrap, prefix, state_topic)
            if not tps:
                return 0
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            pending = {tp for tp in tps if end[tp] > 0}
            while pending:
                batch = await consumer.getmany(*pending, timeout_ms=500)
                for tp, records in batch.items():
                    for record in records:
                        if record.offset < end[tp]:  # stop at the end offsets taken at start
                            on_record(record)
                            count += 1
                for tp in list(pending):
                    if await consumer.position(tp) >= end[tp]:
                        pending.discard(tp)
    except TimeoutError:
        raise TailIncomplete(
            f"tail: stopped after {max_seconds:g}s before reaching the end offsets "
            f"({count} records read); raise --max-seconds"
        ) from None
    finally:
        await consumer.stop()
    return count


async def _partitions(bootstrap: str, prefix: str, state_topic: str) -> list[TopicPartition]:
    """Every partition of the `<prefix>.*` topics (the admin client sees new topics at once)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        try:
            await admin.start()
        except (KafkaError, OSError) as exc:
            raise KafkaUnavailable(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
        names = [t for t in await admin.list_topics() if t.startswith(prefix + ".")]
        names = sorted(t for t in names if t != state_topic)
        described = await admin.describe_topics(names) if names else []
    finally:
        await admin.close()
    return [
        TopicPartition(d["topic"], p["partition"])
        for d in sorted(described, key=lambda d: d["topic"])
        for p in sorted(d["partitions"], key=lambda p: p["partition"])
    ]


def main(
    *,
    bootstrap: str | None,
    prefix: str | None,
    summary: bool,
    max_seconds: float,
    out: TextIO | None = None,
) -> int:
    """Prints JSON lines, or with `summary` a `topic  count  sample_key` table."""
    stream = sys.stdout if out is None else out
    bootstrap = bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP
    prefix = prefix or os.environ.get("INGESTOR_TOPIC_PREFIX") or "stripe"
    topics: dict[str, TopicSummary] = {}

    def on_record(record: Any) -> None:
        if summary:
            s = topics.setdefault(record.topic, TopicSummary())
            s.count += 1
            s.partitions.add(record.partition)
            if not s.sample_key:
                s.sample_key = _text(record.key) or ""
        else:
            stream.write(record_json(record).decode())

    total = asyncio.run(read_all(bootstrap, prefix, on_record, max_seconds=max_seconds))
    if summary:
        write_summary(topics, total, stream)
    stream.flush()
    return 0


def write_summary(topics: dict[str, TopicSummary], total: int, out: TextIO) -> None:
    rows = [("topic", "count", "sample_key")]
    rows += [(t, str(s.count), s.sample_key) for t, s in sorted(topics.items())]
    rows.append(("total", str(total), ""))
    tw = max(len(r[0]) for r in rows)
    cw = max(len(r[1]) for r in rows)
    for t, c, k in rows:
        out.write(f"{t:<{tw}}  {c:>{cw}}  {k}".rstrip() + "\n")
