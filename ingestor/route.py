"""Routing: event (+ hydration) -> Kafka records: the topic, key, headers and value of the
contract (README "The contract"; schemas in ingestor/contracts)."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from typing import Any, Literal

import orjson

from ingestor.errors import TopicCollision
from ingestor.events import Event, Hydration, Record, ms_to_rfc3339

IngestMode = Literal["tail", "backfill", "webhook"]

MAX_TOPIC_LEN = 249
# Longest topic prefix: `<prefix>._ingestor_state` and `<prefix>.<type>` for every Stripe type
# (the longest is 71 characters today) stay legal, unhashed names. config checks this limit.
MAX_PREFIX_LEN = 120
HASH_HEX = 8
MAX_DLQ_DETAIL = 1000
_ILLEGAL = re.compile(r"[^a-zA-Z0-9._-]")
_LEGAL_PREFIX = re.compile(rf"[a-zA-Z0-9._-]{{1,{MAX_PREFIX_LEN}}}")
# A type that already looks like "<something>-<8 hex>" is hashed too, so an unchanged name can
# never equal the hashed form of another type: the two output sets are disjoint.
_LOOKS_HASHED = re.compile(rf"-[0-9a-f]{{{HASH_HEX}}}\Z")
# `<prefix>.all`, `<prefix>.dlq` and `<prefix>._ingestor_state` belong to the service itself.
_RESERVED_TYPES = frozenset({"all", "dlq"})
# Kafka's per-record overhead in a v2 batch is at most this much beyond key, value and headers:
# length, attributes, timestamp and offset deltas, key/value lengths, header count (varints).
_RECORD_OVERHEAD = 40
_HEADER_OVERHEAD = 10
_BATCH_OVERHEAD = 61


def _fold(topic: str) -> str:
    # Kafka refuses (and its metrics confuse) topics that differ only in '.' versus '_'.
    return topic.replace(".", "_")


class Router:
    """Maps events to records. Pure: no I/O; remembers only the topics it has handed out.

    Topic naming: `<prefix>.<type>` when the type is already legal Kafka; otherwise (illegal
    characters replaced by `_`, names over 249 characters, empty or reserved types) the
    sanitized, possibly truncated type gets `-` + the first 8 hex of sha256(type) appended.
    Distinct types whose topics would still clash (a hash collision, or two legal types that
    differ only in `.` versus `_`, which Kafka treats as one topic) raise `TopicCollision`
    rather than silently merging two streams; no real Stripe type pair does.
    """

    def __init__(self, prefix: str, *, firehose: bool = False) -> None:
        if not _LEGAL_PREFIX.fullmatch(prefix) or prefix in {".", ".."}:
            raise ValueError(
                f"topic prefix must be 1-{MAX_PREFIX_LEN} chars of [a-zA-Z0-9._-], got {prefix!r}"
            )
        self.prefix = prefix
        self.firehose = firehose
        self.dlq_topic = f"{prefix}.dlq"
        self.firehose_topic = f"{prefix}.all"
        self._topics: dict[str, str] = {}
        reserved = (self.dlq_topic, self.firehose_topic, f"{prefix}._ingestor_state")
        self._owners: dict[str, str | None] = {_fold(t): None for t in reserved}

    def topic_for(self, event_type: str) -> str:
        topic = self._topics.get(event_type)
        if topic is None:
            topic = self._name(event_type)
            folded = _fold(topic)
            owner = self._owners.get(folded, event_type)
            if owner != event_type:
                raise TopicCollision(
                    f"event type {event_type!r} maps to topic {topic!r}, which collides with "
                    + (f"the topic of {owner!r}" if owner else "a topic of the service itself")
                )
            self._owners[folded] = event_type
            self._topics[event_type] = topic
        return topic

    def _name(self, event_type: str) -> str:
        sanitized = _ILLEGAL.sub("_", event_type)
        plain = f"{self.prefix}.{sanitized}"
        needs_hash = (
            sanitized != event_type
            or not event_type
            or event_type in _RESERVED_TYPES
            or event_type[0] in "._"
            or len(plain) > MAX_TOPIC_LEN
            or _LOOKS_HASHED.search(event_type) is not None
        )
        if not needs_hash:
            return plain
        digest = hashlib.sha256(event_type.encode("utf-8", "surrogatepass")).hexdigest()
        suffix = "-" + digest[:HASH_HEX]
        room = MAX_TOPIC_LEN - len(self.prefix) - 1 - len(suffix)
        return f"{self.prefix}.{sanitized[:room]}{suffix}"

    def route(
        self, event: Event, hydration: Hydration | None, *, ingest_mode: IngestMode
    ) -> list[Record]:
        """The event's record (and its firehose copy when enabled). v2 events need a hydration."""
        if event.raw is not None:
            value = event.raw
        elif event.api == "v1":
            value = _sized(orjson.dumps(event.payload))
        else:
            if hydration is None:
                raise ValueError(f"v2 event {event.id} needs a hydration to build its envelope")
            value = _sized(orjson.dumps(envelope(event, hydration)))
        key = record_key(event)
        headers = event_headers(event, ingest_mode)
        records = [Record(self.topic_for(event.type), key, value, headers, event.id)]
        if self.firehose:
            records.append(Record(self.firehose_topic, key, value, headers, event.id))
        return records

    def dlq_record(
        self,
        event: Event,
        reason: str,
        detail: str,
        original: Record | None = None,
        *,
        ingest_mode: IngestMode = "tail",
        max_bytes: int | None = None,
    ) -> Record:
        """A record for `<prefix>.dlq` (see `dead_letter`) for an event, from its routed record
        or, without one, from Stripe's event JSON (the v1 snapshot or the v2 thin event)."""
        if original is None:
            original = Record(
                self.dlq_topic,
                record_key(event),
                event.json,
                event_headers(event, ingest_mode),
                event.id,
            )
        return dead_letter(
            original,
            reason,
            detail,
            dlq_topic=self.dlq_topic,
            event_type=event.type,
            max_bytes=max_bytes,
        )


def dead_letter(
    record: Record,
    reason: str,
    detail: str,
    *,
    dlq_topic: str,
    event_type: str | None = None,
    max_bytes: int | None = None,
    keep_value: bool = True,
) -> Record:
    """The one dead-letter record builder: `record` readdressed to `dlq_topic`.

    Same key, the record's headers plus `dlq_reason` and `dlq_detail` (one line, at most
    MAX_DLQ_DETAIL characters). The value is the record's own when `keep_value` and the result
    fits `max_bytes` (by `record_size`); otherwise a compact summary `{event_id, event_type,
    reason, size}`, where size is `record_size(record)`. `event_type` defaults to the record's
    `event_type` header.
    """
    headers = (
        *(h for h in record.headers if not h[0].startswith("dlq_")),
        ("dlq_reason", reason.encode()),
        ("dlq_detail", _one_line(detail).encode()),
    )
    if keep_value:
        kept = Record(dlq_topic, record.key, record.value, headers, record.event_id)
        if max_bytes is None or record_size(kept) <= max_bytes:
            return kept
    if event_type is None:
        event_type = next(
            (v.decode("utf-8", "replace") for k, v in record.headers if k == "event_type"), ""
        )
    summary = {
        "event_id": record.event_id,
        "event_type": event_type,
        "reason": reason,
        "size": record_size(record),
    }
    return Record(dlq_topic, record.key, orjson.dumps(summary), headers, record.event_id)


# Headers and framing of one record stay far below this; only values near the limit need the
# exact count.
PRECHECK_SLACK = 16 * 1024


def divert_oversized(
    records: Sequence[Record], *, max_bytes: int, dlq_topic: str
) -> tuple[list[Record], list[int]]:
    """The batch with each record larger than `max_bytes` replaced by its dead letter (reason
    `too_large`, a summary value), and the indexes of those replaced."""
    roomy = max_bytes - PRECHECK_SLACK
    batch: list[Record] = []
    diverted: list[int] = []
    for index, record in enumerate(records):
        if len(record.value) + len(record.key or b"") < roomy:
            batch.append(record)
            continue
        size = record_size(record)
        if size > max_bytes:
            detail = f"{size} bytes > {max_bytes}"
            batch.append(
                dead_letter(record, "too_large", detail, dlq_topic=dlq_topic, keep_value=False)
            )
            diverted.append(index)
        else:
            batch.append(record)
    return batch, diverted


def _sized(value: bytes) -> bytes:
    """A right-sized copy: orjson's bytes keep their growth buffer (~17 KB for a 3 KB event),
    which, buffered by the thousand in a backfill, was most of the process's memory."""
    return memoryview(value).tobytes()


def record_key(event: Event) -> bytes:
    """The object id (so one object's events share a partition), else the event id."""
    return (event.object_id or event.id).encode()


def event_headers(event: Event, ingest_mode: IngestMode) -> tuple[tuple[str, bytes], ...]:
    """The contract's headers (ingestor/contracts/headers.schema.json). `api_version` is always
    present (empty when Stripe gave none); `account` is absent for the platform itself."""
    head = (
        ("event_id", event.id.encode()),
        ("event_type", event.type.encode()),
        ("event_created", ms_to_rfc3339(event.created_ms).encode()),
        ("api_version", (event.api_version or "").encode()),
    )
    tail = _header_tail(event.livemode, event.api, ingest_mode)
    if event.account:
        return (*head, ("account", event.account.encode()), *tail)
    return head + tail


@functools.cache
def _header_tail(livemode: bool, api: str, ingest_mode: str) -> tuple[tuple[str, bytes], ...]:
    # A handful of combinations, built once: this runs for every record published.
    return (
        ("livemode", b"true" if livemode else b"false"),
        ("source", api.encode()),
        ("ingest_mode", ingest_mode.encode()),
    )


def envelope(event: Event, hydration: Hydration) -> dict[str, Any]:
    """The v2 value: the thin event, its related object (or null) and how it was fetched."""
    meta: dict[str, Any] = {
        "status": hydration.status,
        "fetched_at": ms_to_rfc3339(hydration.fetched_at_ms),
    }
    if hydration.error is not None:
        meta["error"] = hydration.error
    return {"event": event.payload, "related_object": hydration.related_object, "hydration": meta}


def record_size(record: Record) -> int:
    """An upper estimate of the record's uncompressed size in a single-record Kafka batch."""
    size = _BATCH_OVERHEAD + _RECORD_OVERHEAD + len(record.value) + len(record.key or b"")
    for name, value in record.headers:
        size += _HEADER_OVERHEAD + len(name.encode()) + len(value)
    return size


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_DLQ_DETAIL else line[: MAX_DLQ_DETAIL - 3] + "..."
