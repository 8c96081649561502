"""Queries: v1 and v2 event lists and retrieves, object reads and the seed operations, as bytes."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import orjson

from ingestor.sim import factories
from ingestor.sim.problems import ApiError, invalid, missing
from ingestor.sim.simulator import Simulator
from ingestor.sim.store import MAX_EVENTS, MAX_MS, key_floor

FAR_FUTURE_MS = MAX_MS
# Connected accounts predate any simulated history (2024-01-01), and list the same every time.
ACCOUNTS_CREATED = 1_704_067_200


@dataclass(frozen=True, slots=True)
class Window:
    """Filters shared by both list endpoints: created bounds in ms [lo, hi) and type patterns."""

    lo_ms: int = 0
    hi_ms: int = FAR_FUTURE_MS
    types: tuple[str, ...] = ()


def _stream(sim: Simulator, account: str | None, api: str) -> int | None:
    problem = sim.api_error_for_account(account)
    if problem:
        raise problem
    return sim.events.stream_for(account, api, create=False)


def _indexes(sim: Simulator, stream: int, api: str, types: tuple[str, ...]) -> list[Any]:
    s = sim.events.streams[stream]
    if not types or "*" in types:
        return [s.keys]
    ixs = {i for pattern in types for i in sim.types_matching(api, pattern)}
    return [s.by_type[i] for i in sorted(ixs) if i in s.by_type]


def _cursor(sim: Simulator, stream: int | None, event_id: str, param: str) -> int:
    serial = sim.views.find_event(event_id)
    ev = sim.events
    if serial is None or stream is None or ev.stream[serial] != stream or not ev.visible[serial]:
        raise invalid(f"No such event: '{event_id}'", param, "resource_missing")
    if ev.created_ms[serial] < sim.retention_cutoff_ms():
        raise invalid(
            f"The event '{event_id}' is older than {sim.scenario.retention_days:g} days and "
            "can no longer be used as a cursor.",
            param,
            "resource_missing",
        )
    return ev.key(serial)


def list_v1(
    sim: Simulator,
    account: str | None,
    window: Window,
    limit: int,
    *,
    starting_after: str | None = None,
    ending_before: str | None = None,
) -> bytes:
    """`GET /v1/events`: newest first; ending_before pages towards newer events."""
    stream = _stream(sim, account, "v1")
    lo = max(key_floor(window.lo_ms), key_floor(sim.retention_cutoff_ms()))
    hi = key_floor(window.hi_ms)
    ascending = False
    if starting_after is not None:
        hi = min(hi, _cursor(sim, stream, starting_after, "starting_after"))
    if ending_before is not None:
        lo = max(lo, _cursor(sim, stream, ending_before, "ending_before") + 1)
        ascending = True
    serials: list[int] = []
    has_more = False
    if stream is not None:
        indexes = _indexes(sim, stream, "v1", window.types)
        serials, has_more = sim.events.select(indexes, lo, hi, limit, ascending=ascending)
    data = b",".join(sim.views.v1_event(s) for s in serials)
    more = b"true" if has_more else b"false"
    return b'{"object":"list","data":[%s],"has_more":%s,"url":"/v1/events"}' % (data, more)


def _encode_page(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(state)).decode().rstrip("=")


def _decode_page(page: str) -> dict[str, Any]:
    try:
        state = orjson.loads(base64.urlsafe_b64decode(page + "=" * (-len(page) % 4)))
        if not isinstance(state, dict) or not {"lo", "hi", "t", "l", "d", "c"} <= state.keys():
            raise ValueError(page)
        return state
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        raise invalid("Invalid page token.", "page", "invalid_page_token") from None


def list_v2(
    sim: Simulator,
    account: str | None,
    window: Window,
    limit: int,
    *,
    object_id: str | None = None,
    page: str | None = None,
) -> bytes:
    """`GET /v2/core/events`: newest first, opaque page tokens carrying the filters."""
    stream = _stream(sim, account, "v2")
    if page is not None:
        state = _decode_page(page)
        lo0, hi0, types = int(state["lo"]), int(state["hi"]), tuple(state["t"])
        object_id = state.get("o")
        limit = int(state["l"]) if limit <= 0 else limit
        direction, cursor = str(state["d"]), int(state["c"])
    else:
        lo0, hi0, types = key_floor(window.lo_ms), key_floor(window.hi_ms), window.types
        direction, cursor = "next", hi0
    limit = limit if limit > 0 else 20
    lo = max(lo0, key_floor(sim.retention_cutoff_ms()))
    accept = None
    if object_id is not None:
        obj = sim.find_object(object_id)
        target = -2 if obj is None else obj
        accept = lambda serial: sim.events.obj[serial] == target  # noqa: E731 - one-line filter
    serials: list[int] = []
    next_url = prev_url = None
    if stream is not None:
        indexes = _indexes(sim, stream, "v2", types)
        ascending = direction == "prev"
        hi = hi0 if ascending else min(hi0, cursor)
        if ascending:
            lo = max(lo, cursor)
        serials, _ = sim.events.select(indexes, lo, hi, limit, ascending=ascending, accept=accept)
        if serials:
            newest, oldest = sim.events.key(serials[0]), sim.events.key(serials[-1])
            base = {"lo": lo0, "hi": hi0, "t": list(types), "l": limit, "o": object_id}
            older, _ = sim.events.select(indexes, lo, oldest, 1, ascending=False, accept=accept)
            newer, _ = sim.events.select(indexes, newest + 1, hi0, 1, ascending=True, accept=accept)
            if older:
                next_url = "/v2/core/events?page=" + _encode_page(
                    {**base, "d": "next", "c": oldest}
                )
            if newer:
                token = _encode_page({**base, "d": "prev", "c": newest + 1})
                prev_url = "/v2/core/events?page=" + token
    data = b",".join(sim.views.v2_event(s) for s in serials)
    return b'{"data":[%s],"next_page_url":%s,"previous_page_url":%s}' % (
        data,
        orjson.dumps(next_url),
        orjson.dumps(prev_url),
    )


def get_event(sim: Simulator, account: str | None, api: str, event_id: str) -> bytes:
    """`GET /v1/events/{id}` and `GET /v2/core/events/{id}` (the latter with `data`)."""
    stream = _stream(sim, account, api)
    serial = sim.views.find_event(event_id)
    ev = sim.events
    if (
        serial is None
        or stream is None
        or ev.stream[serial] != stream
        or not ev.visible[serial]
        or ev.created_ms[serial] < sim.retention_cutoff_ms()
    ):
        raise missing("event", event_id)
    return sim.views.v1_event(serial) if api == "v1" else sim.views.v2_event(serial, full=True)


def _owned_object(sim: Simulator, account: str | None, kind_name: str, object_id: str) -> int:
    problem = sim.api_error_for_account(account)
    if problem:
        raise problem
    kind_ix = sim.kind_ix[kind_name]
    obj = sim.views.find_object(kind_ix, object_id)
    objects = sim.objects
    if obj is None or sim.accounts[objects.account[obj]] != account or objects.deleted[obj]:
        raise missing(kind_name, object_id)
    return obj


def get_object(sim: Simulator, account: str | None, kind_name: str, object_id: str) -> bytes:
    """The object's current state (a newer version after each event on it); 404 once deleted."""
    return sim.views.current_object(_owned_object(sim, account, kind_name, object_id))


def close_dispute(sim: Simulator, account: str | None, dispute_id: str) -> bytes:
    """`POST /v1/disputes/{id}/close`: status becomes lost, emits charge.dispute.closed; once."""
    obj = _owned_object(sim, account, "dispute", dispute_id)
    if sim.objects.status[obj] in ("lost", "won"):
        raise invalid("This dispute is already closed.", code="dispute_already_closed")
    acct = sim.account_ix[account]
    sim.make_event(sim.register_type("charge.dispute.closed", "v1"), acct, sim.now_ms(), obj=obj)
    return sim.views.current_object(obj)


def create_file(
    sim: Simulator, account: str | None, purpose: str, filename: str, content: bytes
) -> bytes:
    """`POST /v1/files`: stores the upload's metadata (not its bytes), emits file.created."""
    problem = sim.api_error_for_account(account)
    if problem:
        raise problem
    if len(sim.events) + 1 >= MAX_EVENTS:
        raise ApiError(500, "The simulator is full.", type="api_error")
    acct = sim.account_ix[account]
    kind = sim.kind_ix["file"]
    now = sim.now_ms()
    obj = sim.objects.add(kind, acct, now)
    sim.views.add_object(obj)
    sim.objects.extras[obj] = {
        "purpose": purpose,
        "filename": filename,
        "size": len(content),
        "title": None,
        "type": filename.rsplit(".", 1)[-1].lower() if "." in filename else None,
        "links": {"object": "list", "data": [], "has_more": False, "url": "/v1/file_links"},
    }
    sim.make_event(sim.register_type("file.created", "v1"), acct, now, obj=obj)
    return sim.views.current_object(obj)


def list_accounts(sim: Simulator, limit: int, starting_after: str | None) -> bytes:
    """`GET /v1/accounts`: the platform's connected accounts (not the revoked), in a stable
    order."""
    accounts = [a for a in sim.accounts if a is not None and a not in sim.revoked]
    start = 0
    if starting_after is not None:
        if starting_after not in accounts:
            raise invalid(f"No such account: '{starting_after}'", "starting_after")
        start = accounts.index(starting_after) + 1
    page = accounts[start : start + limit]
    data = b",".join(account_object(sim, a) for a in page)
    more = b"true" if start + limit < len(accounts) else b"false"
    return b'{"object":"list","data":[%s],"has_more":%s,"url":"/v1/accounts"}' % (data, more)


def account_object(sim: Simulator, account: str) -> bytes:
    example = sim.catalog.examples.get("account")
    created = sim.connected_ms.get(account, ACCOUNTS_CREATED * 1000) // 1000
    doc = dict(example) if example else factories.account(account, created)
    doc.update(id=account, object="account", metadata={}, created=created)
    return orjson.dumps(doc)
