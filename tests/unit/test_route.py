"""Routing: legal, distinct, stable topic names; the contract's keys, headers, values and DLQs."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from ingestor import config
from ingestor.data import event_types
from ingestor.errors import ConfigError, IngestorError, TopicCollision
from ingestor.events import Event, Hydration
from ingestor.route import MAX_PREFIX_LEN, MAX_TOPIC_LEN, Router, record_size

LEGAL = re.compile(r"[a-zA-Z0-9._-]+")


def _event_types() -> list[str]:
    types = event_types()
    return [*types["v1"], *types["v2"]]


def _assert_legal(topic: str) -> None:
    assert LEGAL.fullmatch(topic), topic
    assert 0 < len(topic) <= MAX_TOPIC_LEN
    assert topic not in {".", ".."}


def _v1(**over: Any) -> Event:
    payload = {
        "id": "evt_1",
        "object": "event",
        "type": "charge.dispute.closed",
        "created": 1_700_000_000,
        "livemode": False,
        "api_version": "2026-10-28.endive",
        "data": {"object": {"id": "dp_1", "object": "dispute"}},
    }
    payload.update(over)
    return Event.from_v1(payload)


def _v2(related: bool = True, context: str | None = "acct_9") -> Event:
    payload: dict[str, Any] = {
        "id": "evt_test_v2",
        "object": "v2.core.event",
        "type": "v2.core.account[configuration.merchant].updated",
        "created": "2026-01-02T03:04:05.678Z",
        "livemode": True,
    }
    if context:
        payload["context"] = context
    if related:
        payload["related_object"] = {
            "id": "acct_9",
            "type": "v2.core.account",
            "url": "/v2/core/accounts/acct_9",
        }
    return Event.from_v2(payload, api_version="2026-10-28.endive")


def test_all_real_event_types_map_to_legal_distinct_stable_topics() -> None:
    types = _event_types()
    assert len(types) == 275 + 326
    router = Router("stripe")
    topics = [router.topic_for(t) for t in types]
    for topic in topics:
        _assert_legal(topic)
    assert len(set(topics)) == len(types)
    # Kafka treats names differing only in '.' vs '_' as colliding: none may.
    assert len({t.replace(".", "_") for t in topics}) == len(types)
    again = Router("stripe")
    assert [again.topic_for(t) for t in reversed(types)] == topics[::-1]


def test_legal_types_keep_their_plain_name() -> None:
    router = Router("stripe")
    assert router.topic_for("charge.dispute.closed") == "stripe.charge.dispute.closed"
    assert (
        router.topic_for("v1.billing.meter.error_report_triggered")
        == "stripe.v1.billing.meter.error_report_triggered"
    )


def test_bracketed_v2_type_is_sanitized_and_hash_suffixed() -> None:
    topic = Router("stripe").topic_for("v2.core.account[configuration.merchant].updated")
    assert re.fullmatch(
        r"stripe\.v2\.core\.account_configuration\.merchant_\.updated-[0-9a-f]{8}", topic
    )


def test_adversarial_names_never_collide_and_stay_legal() -> None:
    names = [
        "a[b]",
        "a_b_",
        "a(b)",
        "x" * 300,
        "x" * 299 + "y",
        "y" * 400,
        "ünïcödé.event",
        "unicode.event",
        "😀",
        "",
        ".",
        "..",
        "all",
        "dlq",
        "_ingestor_state",
        "a b",
        "a/b",
        "charge-0123abcd",
    ]
    router = Router("stripe")
    topics = [router.topic_for(n) for n in names]
    for topic in topics:
        _assert_legal(topic)
    assert len(set(topics)) == len(names)
    assert len({t.replace(".", "_") for t in topics}) == len(names)
    assert router.dlq_topic not in topics
    assert router.firehose_topic not in topics
    assert len(router.topic_for("x" * 300)) == MAX_TOPIC_LEN


def test_a_name_that_looks_hashed_cannot_impersonate_a_hashed_topic() -> None:
    router = Router("stripe")
    hashed = router.topic_for("a[b]")
    fake_type = hashed.removeprefix("stripe.")
    assert router.topic_for(fake_type) != hashed


def test_types_differing_only_in_dot_versus_underscore_raise_instead_of_merging() -> None:
    router = Router("stripe")
    router.topic_for("payment_intent.created")
    with pytest.raises(TopicCollision, match=r"payment\.intent\.created"):
        router.topic_for("payment.intent.created")
    assert issubclass(TopicCollision, IngestorError)
    assert not TopicCollision.retriable


def test_longest_prefix_keeps_every_real_type_unhashed_and_longer_is_refused() -> None:
    """At MAX_PREFIX_LEN every Stripe type's topic is `<prefix>.<type>`, legal and unhashed; a
    prefix one longer, or illegal, is refused; config enforces the very same limit."""
    router = Router("p" * MAX_PREFIX_LEN)
    for event_type in _event_types():
        topic = router.topic_for(event_type)
        _assert_legal(topic)
        if LEGAL.fullmatch(event_type):
            assert topic == f"{router.prefix}.{event_type}"
    for bad in ("", ".", "..", "a b", "p" * (MAX_PREFIX_LEN + 1)):
        with pytest.raises(ValueError, match="prefix"):
            Router(bad)
    for prefix, ok in (("p" * MAX_PREFIX_LEN, True), ("p" * (MAX_PREFIX_LEN + 1), False)):
        env = {"STRIPE_API_KEY": "sk_test_route", "INGESTOR_TOPIC_PREFIX": prefix}
        if ok:
            assert config.load(env=env, defaults_file=None).config.kafka.topic_prefix == prefix
        else:
            with pytest.raises(ConfigError, match=str(MAX_PREFIX_LEN)):
                config.load(env=env, defaults_file=None)


def test_v1_record_carries_stripes_json_unchanged_keyed_by_object_id() -> None:
    event = _v1()
    [record] = Router("stripe").route(event, None, ingest_mode="tail")
    assert record.topic == "stripe.charge.dispute.closed"
    assert record.key == b"dp_1"
    assert orjson.loads(record.value) == event.payload
    assert record.event_id == "evt_1"
    assert record.headers == (
        ("event_id", b"evt_1"),
        ("event_type", b"charge.dispute.closed"),
        ("event_created", b"2023-11-14T22:13:20.000Z"),
        ("api_version", b"2026-10-28.endive"),
        ("livemode", b"false"),
        ("source", b"v1"),
        ("ingest_mode", b"tail"),
    )


def test_unknown_api_version_is_an_empty_header_and_connected_account_is_named() -> None:
    event = _v1(api_version=None, account="acct_42")
    [record] = Router("stripe").route(event, None, ingest_mode="backfill")
    headers = dict(record.headers)
    assert headers["api_version"] == b""
    assert headers["account"] == b"acct_42"
    assert headers["ingest_mode"] == b"backfill"


def test_event_without_object_id_is_keyed_by_event_id() -> None:
    event = _v1(data={"object": {"object": "balance"}})
    [record] = Router("stripe").route(event, None, ingest_mode="tail")
    assert record.key == b"evt_1"


def test_v2_record_is_an_envelope_with_hydration_status() -> None:
    event = _v2()
    hydration = Hydration("ok", 1_767_323_046_000, {"id": "acct_9", "object": "v2.core.account"})
    [record] = Router("stripe").route(event, hydration, ingest_mode="tail")
    assert record.key == b"acct_9"
    assert orjson.loads(record.value) == {
        "event": event.payload,
        "related_object": {"id": "acct_9", "object": "v2.core.account"},
        "hydration": {"status": "ok", "fetched_at": "2026-01-02T03:04:06.000Z"},
    }
    headers = dict(record.headers)
    assert headers["source"] == b"v2"
    assert headers["livemode"] == b"true"
    assert headers["account"] == b"acct_9"
    assert headers["event_type"] == b"v2.core.account[configuration.merchant].updated"
    assert headers["event_created"] == b"2026-01-02T03:04:05.678Z"


def test_failed_hydration_envelope_has_null_object_and_error() -> None:
    event = _v2()
    hydration = Hydration("failed", 0, None, "StripeServerError: boom (request req_1)")
    [record] = Router("stripe").route(event, hydration, ingest_mode="tail")
    value = orjson.loads(record.value)
    assert value["related_object"] is None
    assert value["hydration"] == {
        "status": "failed",
        "fetched_at": "1970-01-01T00:00:00.000Z",
        "error": "StripeServerError: boom (request req_1)",
    }


def test_v2_without_hydration_is_refused_and_platform_has_no_account_header() -> None:
    router = Router("stripe")
    with pytest.raises(ValueError, match="hydration"):
        router.route(_v2(), None, ingest_mode="tail")
    [record] = router.route(
        _v2(related=False, context=None), Hydration("ok", 0), ingest_mode="tail"
    )
    assert record.key == b"evt_test_v2"
    assert "account" not in dict(record.headers)


def test_firehose_adds_an_identical_record_on_the_all_topic() -> None:
    records = Router("stripe", firehose=True).route(_v1(), None, ingest_mode="tail")
    assert [r.topic for r in records] == ["stripe.charge.dispute.closed", "stripe.all"]
    assert records[0].value == records[1].value
    assert records[0].headers == records[1].headers
    assert records[0].key == records[1].key


def test_dlq_record_keeps_original_value_and_adds_reason_headers() -> None:
    router = Router("stripe")
    event = _v1()
    [original] = router.route(event, None, ingest_mode="tail")
    dlq = router.dlq_record(event, "hydration_failed", "line one\nline two", original)
    assert dlq.topic == "stripe.dlq"
    assert dlq.key == original.key
    assert dlq.value == original.value
    assert dlq.event_id == "evt_1"
    assert dlq.headers[: len(original.headers)] == original.headers
    assert dict(dlq.headers)["dlq_reason"] == b"hydration_failed"
    assert dict(dlq.headers)["dlq_detail"] == b"line one line two"


def test_oversized_dlq_record_becomes_a_compact_summary() -> None:
    router = Router("stripe")
    event = _v1(data={"object": {"id": "dp_1", "blob": "x" * 5000}})
    [original] = router.route(event, None, ingest_mode="tail")
    dlq = router.dlq_record(event, "too_large", "d" * 5000, original, max_bytes=2048)
    assert record_size(dlq) <= 2048
    assert orjson.loads(dlq.value) == {
        "event_id": "evt_1",
        "event_type": "charge.dispute.closed",
        "reason": "too_large",
        "size": record_size(original),
    }
    assert len(dict(dlq.headers)["dlq_detail"]) == 1000


def test_dlq_without_original_carries_the_event_json() -> None:
    event = _v2()
    dlq = Router("stripe").dlq_record(event, "hydration_failed", "x", ingest_mode="backfill")
    assert orjson.loads(dlq.value) == event.payload
    assert dict(dlq.headers)["ingest_mode"] == b"backfill"
    assert dlq.key == b"acct_9"


def test_record_size_is_an_upper_bound_covering_key_value_and_headers() -> None:
    [record] = Router("stripe").route(_v1(), None, ingest_mode="tail")
    raw = len(record.value) + len(record.key or b"")
    raw += sum(len(k) + len(v) for k, v in record.headers)
    assert raw < record_size(record) <= raw + 61 + 40 + 10 * len(record.headers)
