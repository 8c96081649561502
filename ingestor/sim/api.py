"""Stripe API routes: parameter parsing and validation, then the queries in `listing`."""

from __future__ import annotations

import re

from aiohttp import BodyPartReader, web
from aiohttp.typedefs import Handler
from multidict import MultiMapping

from ingestor.sim import listing
from ingestor.sim.catalog import KINDS
from ingestor.sim.events_time import parse_rfc3339_ms
from ingestor.sim.keys import SIM
from ingestor.sim.listing import FAR_FUTURE_MS, Window
from ingestor.sim.problems import invalid, missing

JSON = "application/json"
_INDEXED = re.compile(r"^(types|expand)(\[\d*\])?$")
V1_LIST_PARAMS = {
    "limit",
    "created",
    "created[gt]",
    "created[gte]",
    "created[lt]",
    "created[lte]",
    "type",
    "starting_after",
    "ending_before",
    "delivery_success",
}
V2_LIST_PARAMS = {"limit", "created[gt]", "created[gte]", "created[lt]", "created[lte]", "page"}
V2_LIST_PARAMS |= {"object_id"}


def _ok(body: bytes) -> web.Response:
    return web.Response(body=body, content_type=JSON)


def v1_account(request: web.Request) -> str | None:
    return request.headers.get("Stripe-Account") or request.headers.get("Stripe-Context") or None


def v2_account(request: web.Request) -> str | None:
    return request.headers.get("Stripe-Context") or request.headers.get("Stripe-Account") or None


def _check_known(query: MultiMapping[str], known: set[str]) -> None:
    for key in query:
        if key not in known and not _INDEXED.match(key):
            raise invalid(f"Received unknown parameter: {key}", key, "parameter_unknown")


def _limit(query: MultiMapping[str], default: int) -> int:
    raw = query.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(
            "Invalid integer: " + raw[:40], "limit", "parameter_invalid_integer"
        ) from None
    if not 1 <= value <= 100:
        raise invalid(
            "This value must be greater than or equal to 1 and less than or equal to 100.",
            "limit",
            "parameter_invalid_integer",
        )
    return value


def _types(query: MultiMapping[str], *, allow_bare: bool) -> list[str]:
    names = [v for k, v in query.items() if k.startswith("types") and _INDEXED.match(k)]
    if allow_bare:
        names += query.getall("types", [])
    if len(names) > 20:
        raise invalid("You may pass at most 20 types.", "types", "parameter_invalid_array")
    if any(not n for n in names):
        raise invalid("Invalid event type.", "types")
    return names


def _v1_window(query: MultiMapping[str]) -> Window:
    lo, hi = 0, FAR_FUTURE_MS
    for key in ("created", "created[gt]", "created[gte]", "created[lt]", "created[lte]"):
        raw = query.get(key)
        if raw is None:
            continue
        try:
            sec = int(raw)
        except ValueError:
            raise invalid(
                f"Invalid integer: {raw[:40]}", key, "parameter_invalid_integer"
            ) from None
        if key == "created":
            lo, hi = max(lo, sec * 1000), min(hi, (sec + 1) * 1000)
        elif key == "created[gt]":
            lo = max(lo, (sec + 1) * 1000)
        elif key == "created[gte]":
            lo = max(lo, sec * 1000)
        elif key == "created[lt]":
            hi = min(hi, sec * 1000)
        else:
            hi = min(hi, (sec + 1) * 1000)
    single = query.get("type")
    many = _types(query, allow_bare=False)
    if single is not None and many:
        raise invalid("You may pass either `type` or `types`, but not both.", "type")
    return Window(lo, hi, (single,) if single else tuple(many))


async def list_v1_events(request: web.Request) -> web.Response:
    q = request.query
    _check_known(q, V1_LIST_PARAMS)
    limit = _limit(q, 10)
    window = _v1_window(q)
    after, before = q.get("starting_after"), q.get("ending_before")
    if after is not None and before is not None:
        raise invalid(
            "You may only specify one of these parameters: ending_before, starting_after.",
            "ending_before",
        )
    ds = q.get("delivery_success")
    if ds is not None and ds not in ("true", "false"):
        raise invalid("Invalid boolean: " + ds[:40], "delivery_success")
    sim = request.app[SIM]
    body = listing.list_v1(
        sim, v1_account(request), window, limit, starting_after=after, ending_before=before
    )
    return _ok(body)


def _v2_window(query: MultiMapping[str]) -> Window:
    lo, hi = 0, FAR_FUTURE_MS
    for key in ("created[gt]", "created[gte]", "created[lt]", "created[lte]"):
        raw = query.get(key)
        if raw is None:
            continue
        try:
            ms = parse_rfc3339_ms(raw)
        except ValueError:
            raise invalid(f"Invalid timestamp: {raw[:40]}", key, "invalid_timestamp") from None
        if key == "created[gt]":
            lo = max(lo, ms + 1)
        elif key == "created[gte]":
            lo = max(lo, ms)
        elif key == "created[lt]":
            hi = min(hi, ms)
        else:
            hi = min(hi, ms + 1)
    return Window(lo, hi, tuple(_types(query, allow_bare=True)))


async def list_v2_events(request: web.Request) -> web.Response:
    q = request.query
    _check_known(q, V2_LIST_PARAMS)
    limit = _limit(q, 0)
    window = _v2_window(q)
    sim = request.app[SIM]
    body = listing.list_v2(
        sim,
        v2_account(request),
        window,
        limit,
        object_id=q.get("object_id"),
        page=q.get("page"),
    )
    return _ok(body)


async def get_v1_event(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    return _ok(listing.get_event(sim, v1_account(request), "v1", request.match_info["id"]))


async def get_v2_event(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    return _ok(listing.get_event(sim, v2_account(request), "v2", request.match_info["id"]))


def _object_handler(kind_name: str, v2: bool) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        account = v2_account(request) if v2 else v1_account(request)
        body = listing.get_object(request.app[SIM], account, kind_name, request.match_info["id"])
        return _ok(body)

    return handler


async def close_dispute(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    return _ok(listing.close_dispute(sim, v1_account(request), request.match_info["id"]))


async def create_file(request: web.Request) -> web.Response:
    if not request.content_type.startswith("multipart/"):
        raise invalid("Files must be uploaded as multipart/form-data.", "file")
    purpose, filename, content = "", "upload", b""
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "purpose":
            purpose = await part.text()
        elif part.name == "file":
            filename = part.filename or filename
            content = bytes(await part.read())
    if not purpose:
        raise invalid("Missing required param: purpose.", "purpose", "parameter_missing")
    if not content:
        raise invalid("Missing required param: file.", "file", "parameter_missing")
    sim = request.app[SIM]
    return _ok(listing.create_file(sim, v1_account(request), purpose, filename, content))


async def list_accounts(request: web.Request) -> web.Response:
    q = request.query
    _check_known(q, {"limit", "starting_after", "created"})
    sim = request.app[SIM]
    return _ok(listing.list_accounts(sim, _limit(q, 10), q.get("starting_after")))


async def get_account(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    account = request.match_info["id"]
    if account not in sim.account_ix or account is None:
        raise missing("account", account)
    return _ok(listing.account_object(sim, account))


async def get_own_account(request: web.Request) -> web.Response:
    """`GET /v1/account`: the platform's own account (or the Stripe-Account one)."""
    sim = request.app[SIM]
    account = v1_account(request)
    problem = sim.api_error_for_account(account)
    if problem:
        raise problem
    return _ok(listing.account_object(sim, account or "acct_1SimPlatform000000"))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/events", list_v1_events)
    r.add_get("/v1/events/{id}", get_v1_event)
    r.add_get("/v2/core/events", list_v2_events)
    r.add_get("/v2/core/events/{id}", get_v2_event)
    r.add_post("/v1/disputes/{id}/close", close_dispute)
    r.add_post("/v1/files", create_file)
    r.add_get("/v1/account", get_own_account)
    r.add_get("/v1/accounts", list_accounts)
    r.add_get("/v1/accounts/{id}", get_account)
    for kind in KINDS:
        r.add_get(kind.collection + "/{id}", _object_handler(kind.name, kind.v2_style))
