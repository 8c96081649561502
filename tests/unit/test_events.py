"""Event normalization: v1 events read from raw bytes keep Stripe's exact JSON."""

from __future__ import annotations

import json
import random

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from ingestor.errors import MalformedResponse
from ingestor.events import V1_LIST, Event
from ingestor.route import Router
from ingestor.sink import CachingPartitioner


def test_v1_raw_event_keeps_stripes_bytes_and_reads_the_routing_fields() -> None:
    event = {
        "id": "evt_1Pgc76B7WZ01zgkWwyRHS12y",
        "object": "event",
        "account": "acct_9",
        "api_version": "2026-10-28.endive",
        "created": 1_700_000_000,
        "livemode": False,
        "pending_webhooks": 0,
        "request": {"id": None, "idempotency_key": None},
        "type": "charge.succeeded",
    }
    event["data"] = {"object": {"id": "ch_123", "object": "charge", "amount": 100}}
    # Stripe's own spacing and key order, which a parse/serialize round trip would change.
    raw = json.dumps(event, indent=1).encode()
    e = Event.from_v1_raw(raw)
    assert e.raw == raw
    assert e.json == raw
    assert (e.id, e.type, e.created_ms, e.object_id, e.account) == (
        event["id"],
        "charge.succeeded",
        1_700_000_000_000,
        "ch_123",
        "acct_9",
    )
    assert e.api_version == event["api_version"]
    [record] = Router("stripe").route(e, None, ingest_mode="tail")
    assert record.value == raw
    assert record.key == b"ch_123"


def test_v1_raw_and_parsed_events_route_to_the_same_topic_key_and_headers() -> None:
    obj = {
        "id": "evt_1",
        "object": "event",
        "type": "invoice.paid",
        "created": 1_700_000_123,
        "livemode": True,
        "api_version": "2026-10-28.endive",
        "data": {"object": {"id": "in_1"}},
    }
    router = Router("p")
    [a] = router.route(Event.from_v1_raw(orjson.dumps(obj)), None, ingest_mode="backfill")
    [b] = router.route(Event.from_v1(obj), None, ingest_mode="backfill")
    assert (a.topic, a.key, a.headers) == (b.topic, b.key, b.headers)
    assert orjson.loads(a.value) == orjson.loads(b.value)


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"[]",
        b'{"id": "evt_1", "type": "x", "data": {"object": {}}}',  # no created
        b'{"id": "evt_1", "type": "x", "created": "soon", "data": {"object": {}}}',
        b'{"id": "", "type": "x", "created": 1, "data": {"object": {}}}',
    ],
)
def test_malformed_v1_raw_events_raise_a_retriable_error(raw: bytes) -> None:
    with pytest.raises(MalformedResponse) as info:
        Event.from_v1_raw(raw)
    assert info.value.retriable


def test_a_list_page_splits_into_each_events_exact_bytes() -> None:
    items = [b'{"id":"evt_1","a":[1,2,{"b":"]"}]}', b'{ "id" : "evt_2" }']
    page = b'{"object":"list","data":[' + b",".join(items) + b'],"has_more":true,"url":"/"}'
    body = V1_LIST.decode(page)
    assert [bytes(r) for r in body.data] == items
    assert body.has_more is True


def test_caching_partitioner_places_keys_exactly_like_the_java_default() -> None:
    rng = random.Random(4)
    cached = CachingPartitioner(max_keys=50)
    for _ in range(2000):
        key = f"ch_{rng.randrange(300):024d}".encode()
        parts = list(range(rng.choice([1, 3, 6, 12])))
        assert cached(key, parts, parts) == DefaultPartitioner()(key, parts, parts)


def test_rfc3339_formatting_is_exact_and_round_trips_to_the_millisecond() -> None:
    from datetime import UTC, datetime

    from ingestor.events import ms_to_rfc3339, rfc3339_to_ms

    rng = random.Random(11)
    for ms in [0, 999, 1000, 86_399_999, 1_700_000_000_999, *rng.sample(range(4 * 10**12), 5000)]:
        text = ms_to_rfc3339(ms)
        assert rfc3339_to_ms(text) == ms
        whole = datetime.fromtimestamp(ms // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
        assert text == f"{whole}.{ms % 1000:03d}Z"
