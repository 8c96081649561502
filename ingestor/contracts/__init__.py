"""The public Kafka contract as JSON Schemas, and a check of one record against it (no I/O)."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any, Protocol

from ingestor.errors import ContractViolation

SCHEMA_FILES = (
    "headers.schema.json",
    "v1-event.schema.json",
    "v2-envelope.schema.json",
    "dlq.schema.json",
)
_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")


class RecordLike(Protocol):
    """Record, aiokafka's ConsumerRecord, or anything with these four attributes."""

    @property
    def topic(self) -> str: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """One of SCHEMA_FILES, or asyncapi.json, parsed (read from the installed package)."""
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


@functools.cache
def _validators() -> dict[str, Any]:
    # Imported here so the service itself never needs jsonschema; tests and checks do.
    # The ignores: jsonschema and referencing are dev extras, typed only where their stubs are.
    import jsonschema  # type: ignore[import-untyped,import-not-found,unused-ignore]
    from referencing import Registry, Resource  # type: ignore[import-not-found,unused-ignore]
    from referencing.exceptions import NoSuchResource  # type: ignore[import-not-found,unused-ignore]

    docs = {name: load_schema(name) for name in SCHEMA_FILES}

    def retrieve(uri: str) -> Any:
        # The schemas refer to each other by file name (`./headers.schema.json`), as the
        # AsyncAPI parser and other file-based tools resolve them.
        name = uri.rsplit("/", 1)[-1]
        if name not in docs:
            raise NoSuchResource(ref=uri)  # type: ignore[call-arg,unused-ignore]  # see below
        return Resource.from_contents(docs[name])

    # The ignores: referencing's classes are attrs classes behind its own decorator, so
    # mypy sees neither the `ref` field nor the `retrieve` alias.
    registry: Any = Registry(retrieve=retrieve).with_resources(  # type: ignore[call-arg,unused-ignore]
        (doc["$id"], Resource.from_contents(doc)) for doc in docs.values()
    )
    checker = jsonschema.FormatChecker()

    def make(schema: dict[str, Any]) -> Any:
        return jsonschema.Draft202012Validator(schema, registry=registry, format_checker=checker)

    return {
        "headers": make(docs["headers.schema.json"]),
        "v1": make(docs["v1-event.schema.json"]),
        "v2": make(docs["v2-envelope.schema.json"]),
        "dlq": make(docs["dlq.schema.json"]),
        "dlq_headers": make({"$ref": "urn:ingestor:contracts:dlq#/$defs/headers"}),
    }


def validate_record(record: RecordLike) -> dict[str, Any]:
    """Checks topic, key, headers and value against the contract; returns the decoded value.

    Raises ContractViolation naming the first problem. Which schema applies follows from the
    headers: `dlq_reason` marks a dead-letter record, else `source` picks v1 or v2.
    """
    if not _TOPIC.fullmatch(record.topic) or record.topic in {".", ".."}:
        raise ContractViolation(f"illegal topic name {record.topic!r}")
    if not record.key:
        raise ContractViolation(f"{record.topic}: record without a key")
    headers: dict[str, str] = {}
    for name, raw in record.headers:
        if name in headers:
            raise ContractViolation(f"{record.topic}: header {name!r} appears twice")
        try:
            headers[name] = raw.decode("utf-8")
        except (UnicodeDecodeError, AttributeError) as exc:
            raise ContractViolation(f"{record.topic}: header {name!r} is not UTF-8") from exc
    if record.value is None:
        raise ContractViolation(f"{record.topic}: record without a value")
    try:
        value = json.loads(record.value)
    except ValueError as exc:
        raise ContractViolation(f"{record.topic}: value is not JSON: {exc}") from exc
    validators = _validators()
    is_dlq = "dlq_reason" in headers
    _check(validators["dlq_headers" if is_dlq else "headers"], headers, record.topic, "headers")
    kind = "dlq" if is_dlq else headers["source"]
    _check(validators[kind], value, record.topic, "value")
    if not is_dlq:
        event = value if kind == "v1" else value["event"]
        if event["id"] != headers["event_id"] or event["type"] != headers["event_type"]:
            raise ContractViolation(f"{record.topic}: event_id/event_type headers != value")
    if not isinstance(value, dict):  # pragma: no cover - every schema requires an object
        raise ContractViolation(f"{record.topic}: value is not an object")
    return value


def _check(validator: Any, instance: Any, topic: str, part: str) -> None:
    error = next(iter(validator.iter_errors(instance)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise ContractViolation(f"{topic}: {part} at {where}: {error.message}"[:500])


__all__ = ["SCHEMA_FILES", "RecordLike", "load_schema", "validate_record"]
