"""Contracts: records from Router.route validate against the shipped schemas; AsyncAPI is whole."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import jsonschema  # type: ignore[import-untyped,import-not-found,unused-ignore]  # stubs optional
import pytest

from ingestor.contracts import SCHEMA_FILES, load_schema, validate_record
from ingestor.data import event_types
from ingestor.errors import ContractViolation
from ingestor.events import Event, Hydration, Record
from ingestor.route import Router, record_size
from ingestor.sim import factories


def _types() -> tuple[tuple[str, ...], tuple[str, ...]]:
    types = event_types()
    return types["v1"], types["v2"]


def _resource_for(event_type: str) -> dict[str, Any]:
    # The longest kind the type starts with, e.g. "charge.dispute.closed" -> "charge".
    parts = event_type.split(".")
    for n in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:n])
        if name in factories.FACTORIES:
            return factories.build(name, f"{name[:3]}_1PgafuB7WZ01zgkWXYmPNZs8", 1_767_225_000)
    return factories.charge("ch_1PgafuB7WZ01zgkWXYmPNZs8", 1_767_225_000)


def _v1_events() -> Iterator[Event]:
    template = {
        "id": "evt_1Pgc76B7WZ01zgkWwyRHS12y",
        "object": "event",
        "api_version": None,
        "created": 1_767_225_599,
        "data": {"object": factories.price("price_1PgafmB7WZ01zgkW6dKueIc5", 1_767_225_000)},
        "livemode": False,
        "pending_webhooks": 0,
        "request": {"id": None, "idempotency_key": None},
        "type": "price.created",
    }
    yield Event.from_v1(template)
    v1_types, _ = _types()
    for i, event_type in enumerate(v1_types):
        payload = template | {
            "id": f"evt_1Pgc76B7WZ01zgkW{i:08d}",
            "type": event_type,
            "created": 1_767_225_600 + i,
            "livemode": i % 2 == 0,
            "api_version": None if i % 7 == 0 else "2026-10-28.endive",
            "data": {"object": _resource_for(event_type)},
        }
        if i % 3 == 0:
            payload["account"] = f"acct_1Connected{i}"
        yield Event.from_v1(payload)


def _v2_events() -> Iterator[tuple[Event, Hydration]]:
    _, v2_types = _types()
    for i, event_type in enumerate(v2_types):
        thin: dict[str, Any] = {
            "id": f"evt_test_65R{i:08d}",
            "object": "v2.core.event",
            "type": event_type,
            "created": f"2026-01-02T03:04:{i % 60:02d}.{i % 1000:03d}Z",
            "livemode": False,
        }
        if i % 2:
            thin["context"] = f"acct_1Ctx{i}"
        related = i % 5 != 0
        if related:
            thin["related_object"] = {
                "id": f"obj_{i}",
                "type": event_type.rsplit(".", 1)[0],
                "url": f"/v2/core/things/obj_{i}",
            }
        event = Event.from_v2(thin, api_version="2026-10-28.endive")
        if not related:
            yield event, Hydration("ok", 1_767_323_046_123)
        elif i % 5 == 1:
            yield event, Hydration("not_found", 1_767_323_046_123)
        elif i % 5 == 2:
            error = "StripeServerError: busy (request req_1)"
            yield event, Hydration("failed", 1_767_323_046_123, None, error)
        else:
            obj = {"id": f"obj_{i}", "object": thin["related_object"]["type"], "livemode": False}
            yield event, Hydration("ok", 1_767_323_046_123, obj)


def test_schemas_are_valid_draft_2020_12() -> None:
    for name in SCHEMA_FILES:
        schema = load_schema(name)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$id"].startswith("urn:ingestor:contracts:")


def test_every_v1_record_validates() -> None:
    router = Router("stripe", firehose=True)
    count = 0
    for event in _v1_events():
        for mode in ("tail", "backfill", "webhook"):
            for record in router.route(event, None, ingest_mode=mode):
                assert validate_record(record) == event.payload
                count += 1
    assert count == 2 * 3 * 276


def test_every_v2_record_validates() -> None:
    router = Router("stripe", firehose=True)
    statuses = set()
    for event, hydration in _v2_events():
        for record in router.route(event, hydration, ingest_mode="tail"):
            value = validate_record(record)
            assert value["event"] == event.payload
            statuses.add(value["hydration"]["status"])
    assert statuses == {"ok", "not_found", "failed"}


def test_dlq_records_validate_in_every_shape() -> None:
    router = Router("stripe")
    v1 = next(_v1_events())
    [original] = router.route(v1, None, ingest_mode="tail")
    event, hydration = next((e, h) for e, h in _v2_events() if h.status == "failed")
    [v2_original] = router.route(event, hydration, ingest_mode="backfill")
    records = [
        router.dlq_record(v1, "too_large", "record 2 MB > 1 MB", original),
        router.dlq_record(v1, "too_large", "record 2 MB > 1 MB", original, max_bytes=600),
        router.dlq_record(event, "hydration_failed", hydration.error or "", v2_original),
        router.dlq_record(event, "hydration_failed", "x", ingest_mode="backfill"),
    ]
    values = [validate_record(r) for r in records]
    assert values[1] == {
        "event_id": v1.id,
        "event_type": v1.type,
        "reason": "too_large",
        "size": record_size(original),
    }
    assert values[3] == event.payload


def _record() -> Record:
    event = Event.from_v1(
        {
            "id": "evt_1",
            "object": "event",
            "type": "charge.succeeded",
            "created": 1,
            "livemode": False,
            "data": {"object": {"id": "ch_1"}},
        }
    )
    [record] = Router("stripe").route(event, None, ingest_mode="tail")
    return record


def _with_header(record: Record, name: str, value: bytes | None) -> Record:
    headers = tuple(h for h in record.headers if h[0] != name)
    if value is not None:
        headers += ((name, value),)
    return replace(record, headers=headers)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda r: _with_header(r, "event_id", None), "event_id"),
        (lambda r: _with_header(r, "livemode", b"False"), "livemode"),
        (lambda r: _with_header(r, "event_created", b"2026-01-01 00:00:00"), "event_created"),
        (lambda r: _with_header(r, "account", b"\xff\xfe"), "UTF-8"),
        (lambda r: _with_header(r, "surprise", b"1"), "surprise"),
        (lambda r: _with_header(r, "event_id", b"evt_other"), "headers != value"),
        (lambda r: replace(r, topic="stripe.a[b]"), "illegal topic"),
        (lambda r: replace(r, key=None), "without a key"),
        (lambda r: replace(r, value=b"{not json"), "not JSON"),
        (lambda r: replace(r, value=b'{"id": "evt_1"}'), "value"),
    ],
)
def test_records_breaking_the_contract_are_rejected(change: Any, match: str) -> None:
    assert validate_record(_record())["id"] == "evt_1"
    with pytest.raises(ContractViolation, match=match):
        validate_record(change(_record()))


def test_failed_hydration_without_error_or_with_object_is_rejected() -> None:
    event, _ = next(_v2_events())
    router = Router("stripe")
    [no_error] = router.route(event, Hydration("failed", 0), ingest_mode="tail")
    with pytest.raises(ContractViolation, match="error"):
        validate_record(no_error)
    [with_object] = router.route(event, Hydration("not_found", 0, {"id": "x"}), ingest_mode="tail")
    with pytest.raises(ContractViolation, match="related_object"):
        validate_record(with_object)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(doc: Any, pointer: str) -> Any:
    for part in filter(None, pointer.split("/")):
        doc = doc[part.replace("~1", "/").replace("~0", "~")]
    return doc


def test_asyncapi_document_is_v3_and_every_reference_resolves() -> None:
    doc = load_schema("asyncapi.json")
    assert doc["asyncapi"] == "3.0.0"
    assert {c["address"] for c in doc["channels"].values()} == {
        "{prefix}.{eventType}",
        "{prefix}.all",
        "{prefix}.dlq",
    }
    refs = list(_refs(doc))
    assert refs
    for ref in refs:
        target, _, fragment = ref.partition("#")
        base = load_schema(target.removeprefix("./")) if target else doc
        assert _resolve(base, fragment) is not None, ref
    for operation in doc["operations"].values():
        assert operation["action"] == "send"
        channel = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel + "/messages/")
