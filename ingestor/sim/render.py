"""Byte templates: each object kind is serialised once with placeholders, then rendered by joins."""

from __future__ import annotations

import re
import time
from typing import Any

import orjson

from ingestor.sim import factories
from ingestor.sim.catalog import Kind

# A slot is a whole JSON value (`"@@SIM_ID@@"`) or sits inside a string (`"/v1/x/@@SIM_ID@@"`),
# where it takes the same value without its quotes (ids and times never need escaping).
_SLOT = re.compile(rb'"@@SIM_([A-Z]+)@@"|@@SIM_([A-Z]+)@@')


def rfc3339_ms(ms: int) -> str:
    """Unix ms -> `2026-01-02T03:04:05.678Z`, as Stripe's v2 API writes times."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


class Template:
    """A JSON document split around its slots; `render` fills the slots in order."""

    __slots__ = ("inner", "parts", "slots")

    def __init__(self, doc: dict[str, Any]) -> None:
        raw = orjson.dumps(doc)
        self.parts: list[bytes] = []
        self.slots: list[str] = []
        self.inner: list[bool] = []
        pos = 0
        for m in _SLOT.finditer(raw):
            self.parts.append(raw[pos : m.start()])
            whole = m.group(1)
            self.slots.append((whole or m.group(2)).decode())
            self.inner.append(whole is None)
            pos = m.end()
        self.parts.append(raw[pos:])

    def render(self, values: dict[str, bytes]) -> bytes:
        out = [self.parts[0]]
        for slot, inner, part in zip(self.slots, self.inner, self.parts[1:], strict=True):
            value = values[slot]
            out.append(value[1:-1] if inner else value)
            out.append(part)
        return b"".join(out)


def _slot(name: str) -> str:
    return f"@@SIM_{name}@@"


def object_template(
    kind: Kind, examples: dict[str, dict[str, Any]], *, slim: bool = False
) -> Template:
    """The kind's object with id, created, metadata and status turned into slots: built by the
    project's factories, unless the optional Stripe examples (`stripe_fixtures`) have one.
    `slim` keeps only those fields (and `object`, `livemode`)."""
    if kind.name in examples:
        doc = dict(examples[kind.name])
    else:
        doc = factories.build(kind.name, _slot("ID"), _slot("CREATED"))
    has_status = "status" in doc
    if slim:
        doc = {}
    doc["id"] = _slot("ID")
    doc["object"] = kind.name
    doc["created"] = _slot("CREATED")
    doc["livemode"] = False
    doc["metadata"] = _slot("META")
    if has_status:
        doc["status"] = _slot("STATUS")
    return Template(doc)


def default_status(kind: Kind, examples: dict[str, dict[str, Any]]) -> str:
    """The status an object of the kind has before any event sets one."""
    doc = examples.get(kind.name) or factories.build(kind.name, "", 0)
    return str(doc.get("status") or "active")


def event_template(with_account: bool, with_previous: bool) -> Template:
    """A v1 snapshot event; `data.object` is spliced in already rendered."""
    doc: dict[str, Any] = {"id": _slot("ID"), "object": "event"}
    if with_account:
        doc["account"] = _slot("ACCOUNT")
    doc["api_version"] = _slot("VERSION")
    doc["created"] = _slot("CREATED")
    data: dict[str, Any] = {"object": _slot("OBJECT")}
    if with_previous:
        data["previous_attributes"] = {"metadata": _slot("PREVIOUS")}
    doc["data"] = data
    doc["livemode"] = False
    doc["pending_webhooks"] = _slot("WEBHOOKS")
    doc["request"] = _slot("REQUEST")
    doc["type"] = _slot("TYPE")
    return Template(doc)


def thin_template(with_context: bool, with_related: bool, with_data: bool) -> Template:
    """A v2 thin event (and, with data, the retrieved full event)."""
    doc: dict[str, Any] = {"id": _slot("ID"), "object": "v2.core.event", "type": _slot("TYPE")}
    doc["created"] = _slot("CREATED")
    doc["livemode"] = False
    if with_context:
        doc["context"] = _slot("ACCOUNT")
    doc["reason"] = _slot("REASON")
    if with_related:
        doc["related_object"] = _slot("RELATED")
    if with_data:
        doc["data"] = _slot("DATA")
    return Template(doc)


def jstr(text: str) -> bytes:
    """A JSON string literal (ids and type names never need escaping beyond orjson's)."""
    return orjson.dumps(text)
