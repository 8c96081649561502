"""`ingestor tail`: prints what was published under a prefix, as read_committed consumers see it."""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ingestor.clock import wall_ms
from ingestor.config import KafkaConfig
from ingestor.errors import KafkaUnavailable, TailIncomplete
from ingestor.timespec import parse_since

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
# What `--account` and the readable lines call events of the platform itself (no account).
PLATFORM = "platform"


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


# Where reading starts: the first offset, the end (only what is published from now on), or
# the first record whose Kafka timestamp (its publish time) is at or after these Unix ms.
Start = Literal["beginning", "end"] | int
_REDISCOVER_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Select:
    """Which records to show: event types matching any glob in `types` (all when empty), and
    one `account` (`platform` for the platform's own events; every account when None)."""

    types: tuple[str, ...] = ()
    account: str | None = None

    def __call__(self, record: Any) -> bool:
        headers = _headers(record)
        if self.types:
            event_type = headers.get("event_type", "")
            if not any(fnmatch.fnmatchcase(event_type, p) for p in self.types):
                return False
        if self.account is not None:
            account = headers.get("account") or PLATFORM
            if account != self.account:
                return False
        return True


async def read_all(
    bootstrap: str,
    prefix: str,
    on_record: Callable[[Any], None],
    *,
    max_seconds: float | None = 60.0,
    start: Start = "beginning",
    follow: bool = False,
    select: Callable[[Any], bool] | None = None,
    limit: int | None = None,
) -> int:
    """Reads every `<prefix>.*` topic except the state topic, from `start`.

    read_committed: aborted transactions never show, exactly what downstream consumers see.
    Without `follow` it stops at the end offsets taken at start (TailIncomplete when
    `max_seconds` passes first); with `follow` it keeps reading, picks up topics created
    meanwhile (from their beginning: all they hold is new), and returns once `max_seconds`
    have passed. Either way it returns after `limit` records. Only records `select` accepts
    reach `on_record`; returns how many did.
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
            if not tps and not follow:
                return 0
            first = await _assign(consumer, tps, start)
            end = await consumer.end_offsets(tps) if tps else {}
            pending = {tp for tp in tps if first[tp] < end[tp]}
            loop = asyncio.get_running_loop()
            rediscover_at = loop.time() + _REDISCOVER_SECONDS
            while pending or follow:
                if follow and loop.time() >= rediscover_at:
                    tps = await _add_new(consumer, bootstrap, prefix, state_topic, tps)
                    rediscover_at = loop.time() + _REDISCOVER_SECONDS
                if not tps:
                    await asyncio.sleep(0.5)
                    continue
                batch = await consumer.getmany(*(tps if follow else pending), timeout_ms=500)
                for tp, records in sorted(batch.items()):
                    for record in records:
                        # Without follow, stop at the end offsets taken at start.
                        if not follow and record.offset >= end[tp]:
                            continue
                        if select is None or select(record):
                            on_record(record)
                            count += 1
                            if limit is not None and count >= limit:
                                return count
                for tp in list(pending):
                    if await consumer.position(tp) >= end[tp]:
                        pending.discard(tp)
    except TimeoutError:
        if follow:
            return count
        raise TailIncomplete(
            f"tail: stopped after {max_seconds:g}s before reaching the end offsets "
            f"({count} records read); raise --max-seconds"
        ) from None
    finally:
        await consumer.stop()
    return count


async def _start_offsets(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], start: Start
) -> dict[TopicPartition, int]:
    """The offset each partition is read from (the partitions are assigned already: offset
    look-ups for topics the consumer has no metadata for wait on a refresh per topic)."""
    if not tps:
        return {}
    if start == "beginning":
        return dict(await consumer.beginning_offsets(tps))
    end: dict[TopicPartition, int] = await consumer.end_offsets(tps)
    if start == "end":
        return end
    found = await consumer.offsets_for_times({tp: start for tp in tps})
    # None: no record at or after that time yet, so everything from the end on is newer.
    return {tp: end[tp] if at is None else at.offset for tp, at in found.items()}


async def _assign(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    start: Start,
    positions: dict[TopicPartition, int] | None = None,
) -> dict[TopicPartition, int]:
    """Assigns `tps` and seeks each to `positions` or else to `start`; returns the offsets.

    seek() cancels the reset to `auto_offset_reset` the assignment began, and drops anything
    fetched before it.
    """
    consumer.assign(tps)
    positions = positions or {}
    rest = [tp for tp in tps if tp not in positions]
    offsets = {**positions, **await _start_offsets(consumer, rest, start)}
    for tp, offset in offsets.items():
        consumer.seek(tp, offset)
    return offsets


async def _add_new(
    consumer: AIOKafkaConsumer,
    bootstrap: str,
    prefix: str,
    state_topic: str,
    tps: list[TopicPartition],
) -> list[TopicPartition]:
    """Adds partitions that appeared since `tps` was taken; they are read from their start."""
    now = await _partitions(bootstrap, prefix, state_topic)
    new = [tp for tp in now if tp not in set(tps)]
    if not new:
        return tps
    # assign() forgets positions, so the current ones are put back with the new partitions.
    positions = {tp: await consumer.position(tp) for tp in tps}
    await _assign(consumer, now, "beginning", positions)
    return now


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
    summary: bool = False,
    max_seconds: float | None = None,
    types: Sequence[str] = (),
    account: str | None = None,
    since: str | None = None,
    from_beginning: bool = False,
    follow: bool = False,
    limit: int | None = None,
    output: Literal["auto", "text", "json"] = "auto",
    out: TextIO | None = None,
) -> int:
    """Prints one line per record: readable text on a terminal, JSON lines otherwise (or as
    `output` says); with `summary` a `topic  count  sample_key` table instead.

    Start: `since` (parsed by timespec.parse_since, matched against the records' Kafka
    timestamps, i.e. when they were published), else the beginning; with `follow`, the end
    unless `from_beginning`. `max_seconds` defaults to 60 without `follow` and to no limit
    with it. ConfigError (exit 2) on a bad `since`.
    """
    stream = sys.stdout if out is None else out
    bootstrap = bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP
    prefix = prefix or os.environ.get("INGESTOR_TOPIC_PREFIX") or "stripe"
    begin: Start = "end" if follow and not from_beginning else "beginning"
    if since is not None:
        begin = parse_since(since, wall_ms())
    if max_seconds is None and not follow:
        max_seconds = 60.0
    as_text = output == "text" or (output == "auto" and _isatty(stream))
    topics: dict[str, TopicSummary] = {}

    def on_record(record: Any) -> None:
        if summary:
            s = topics.setdefault(record.topic, TopicSummary())
            s.count += 1
            s.partitions.add(record.partition)
            if not s.sample_key:
                s.sample_key = _text(record.key) or ""
            return
        stream.write(record_line(record) + "\n" if as_text else record_json(record).decode())
        if follow:
            stream.flush()  # whoever reads a follow wants each line as it comes

    patterns = tuple(p.strip() for t in types for p in t.split(",") if p.strip())
    select = Select(patterns, account) if patterns or account is not None else None
    total = asyncio.run(
        read_all(
            bootstrap,
            prefix,
            on_record,
            max_seconds=max_seconds,
            start=begin,
            follow=follow,
            select=select,
            limit=limit,
        )
    )
    if summary:
        write_summary(topics, total, stream)
    stream.flush()
    return 0


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _headers(record: Any) -> dict[str, str]:
    return {k: _text(v) or "" for k, v in (record.headers or ())}


# ISO 4217 currencies Stripe amounts have no minor unit for, and those with three decimals.
_ZERO_DECIMAL = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)
_THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])


def _amount(amount: int, currency: str) -> str:
    digits = 0 if currency in _ZERO_DECIMAL else 3 if currency in _THREE_DECIMAL else 2
    sign, units = ("-" if amount < 0 else ""), abs(amount)
    if digits == 0:
        return f"{sign}{units} {currency.upper()}"
    whole, minor = divmod(units, 10**digits)
    return f"{sign}{whole}.{minor:0{digits}d} {currency.upper()}"


def record_line(record: Any) -> str:
    """One readable line: time, type, object id, account, then amount and status when the
    object has them (a dead letter shows its reason, a v2 envelope a hydration not ok)."""
    headers = _headers(record)
    value = _value(record.value)
    obj: Any = None
    notes: list[str] = []
    if isinstance(value, dict):
        if "dlq_reason" in headers:
            notes.append(f"dlq:{headers['dlq_reason']}")
        elif headers.get("source") == "v2" and isinstance(value.get("event"), dict):
            obj = value.get("related_object")
            hydration = value.get("hydration")
            if isinstance(hydration, dict) and hydration.get("status") != "ok":
                notes.append(f"hydration:{hydration.get('status')}")
            if not isinstance(obj, dict):
                related = value["event"].get("related_object")
                obj = {"id": related.get("id")} if isinstance(related, dict) else None
        else:
            data = value.get("data")
            obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        obj = {}
    amount, currency, status = obj.get("amount"), obj.get("currency"), obj.get("status")
    shown = []
    if type(amount) is int and isinstance(currency, str):
        shown.append(_amount(amount, currency.lower()))
    if isinstance(status, str):
        shown.append(status)
    created = headers.get("event_created", "")
    fields = [
        created[:19].replace("T", " ") if created else "-",
        f"{headers.get('event_type') or record.topic:<28}",
        f"{obj.get('id') or _text(record.key) or '-':<28}",
        f"{headers.get('account') or PLATFORM:<21}",
        *shown,
        *notes,
    ]
    return "  ".join(fields).rstrip()


def write_summary(topics: dict[str, TopicSummary], total: int, out: TextIO) -> None:
    rows = [("topic", "count", "sample_key")]
    rows += [(t, str(s.count), s.sample_key) for t, s in sorted(topics.items())]
    rows.append(("total", str(total), ""))
    tw = max(len(r[0]) for r in rows)
    cw = max(len(r[1]) for r in rows)
    for t, c, k in rows:
        out.write(f"{t:<{tw}}  {c:>{cw}}  {k}".rstrip() + "\n")
