"""The `/_sim/` control surface (no auth): add events, change knobs, ground truth, counters."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from ingestor.sim.keys import SIM, WEBHOOKS
from ingestor.sim.scenario import Faults, destination_from_mapping


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        data = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(text="expected a JSON object") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return data


async def add_events(request: web.Request) -> web.Response:
    """`{count, type?, account?, api?, lag_seconds?, created?, object_id?}` -> `{ids}`."""
    body = await _body(request)
    allowed = {"count", "type", "account", "api", "lag_seconds", "created", "object_id"}
    if set(body) - allowed:
        return _json({"error": f"unknown keys {sorted(set(body) - allowed)}"}, 400)
    try:
        ids = request.app[SIM].add_events(
            int(body.get("count", 1)),
            type=body.get("type"),
            account=body.get("account"),
            api=str(body.get("api", "v1")),
            lag_seconds=float(body.get("lag_seconds", 0.0)),
            created=None if body.get("created") is None else float(body["created"]),
            object_id=body.get("object_id"),
        )
    except (ValueError, TypeError, OverflowError) as exc:
        return _json({"error": str(exc)}, 400)
    return _json({"ids": ids})


async def set_config(request: web.Request) -> web.Response:
    """`{faults?: {...}, rate_limit?, endpoint_rate_limit?, concurrency_limit?,
    endpoint_concurrency_limit?, latency_ms?: [min, max], late_share?,
    lag_seconds?: [min, max], live_rate?, fault_paths?: [prefix, ...], advance_clock_seconds?}`;
    returns the new settings. `fault_paths` limits faults to API paths with those prefixes."""
    body = await _body(request)
    sim = request.app[SIM]
    try:
        faults = body.pop("faults", None)
        advance = body.pop("advance_clock_seconds", None)
        sim.set_faults(
            Faults(**faults) if isinstance(faults, dict) else None,
            rate_limit=body.pop("rate_limit", None),
            endpoint_rate_limit=body.pop("endpoint_rate_limit", None),
            concurrency_limit=body.pop("concurrency_limit", None),
            endpoint_concurrency_limit=body.pop("endpoint_concurrency_limit", None),
            latency_ms=body.pop("latency_ms", None),
            late_share=body.pop("late_share", None),
            lag_seconds=body.pop("lag_seconds", None),
            live_rate=body.pop("live_rate", None),
            fault_paths=body.pop("fault_paths", None),
        )
        if body:
            raise ValueError(f"unknown keys {sorted(body)}")
        if advance is not None:
            sim.advance_clock(float(advance))
    except (ValueError, TypeError) as exc:
        return _json({"error": str(exc)}, 400)
    return _json(settings(request))


def settings(request: web.Request) -> dict[str, Any]:
    sim = request.app[SIM]
    f = sim.faults
    return {
        "faults": {k: getattr(f, k) for k in f.__dataclass_fields__},
        "fault_paths": list(sim.fault_paths),
        "rate_limit": sim.rate_limit,
        "endpoint_rate_limit": sim.endpoint_rate_limit,
        "concurrency_limit": sim.concurrency_limit,
        "endpoint_concurrency_limit": sim.endpoint_concurrency_limit,
        "latency_ms": list(sim.latency_ms),
        "late_share": sim.late_share,
        "lag_seconds": list(sim.lag_seconds),
        "live_rate": sim.live_rate,
        "now_ms": sim.now_ms(),
        "events": len(sim.events),
        "pending": len(sim.events.pending),
        "accounts": [a for a in sim.accounts if a],
    }


async def get_config(request: web.Request) -> web.Response:
    return _json(settings(request))


async def truth(request: web.Request) -> web.Response:
    return web.Response(body=request.app[SIM].truth_bytes(), content_type="application/json")


async def warm(request: web.Request) -> web.Response:
    return _json({"rendered": request.app[SIM].warm()})


async def counters(request: web.Request) -> web.Response:
    return _json(request.app[SIM].counters())


async def reset_counters(request: web.Request) -> web.Response:
    request.app[SIM].reset_counters()
    return _json({})


async def webhooks(request: web.Request) -> web.Response:
    """`{destinations: [{url, kind, attempts, acked, acked_events, failed, retries, gave_up,
    duplicates, delayed, in_flight, statuses}], pending}`; secrets are never shown."""
    deliverer = request.app[WEBHOOKS]
    return _json({"destinations": deliverer.counters(), "pending": deliverer.pending()})


async def add_webhook(request: web.Request) -> web.Response:
    """`{url, secret, kind?, max_attempts?, backoff_initial_seconds?, ...}` (the keys of a
    scenario's `[[webhooks]]` table) -> `{index}`; the destination gets every event that
    becomes visible from now on."""
    body = await _body(request)
    try:
        destination = destination_from_mapping(body)
    except (ValueError, TypeError) as exc:
        return _json({"error": str(exc)}, 400)
    deliverer = request.app[WEBHOOKS]
    index = deliverer.add(destination)
    await deliverer.start()
    return _json({"index": index})


async def connect_account(request: web.Request) -> web.Response:
    """`{account, lag_seconds?}` -> `{event_id}`: connects the account now (see
    Simulator.connect_account)."""
    body = await _body(request)
    account = str(body.get("account", ""))
    if not account.startswith("acct_"):
        return _json({"error": "expected an acct_... id"}, 400)
    try:
        lag = float(body.get("lag_seconds", 0.0))
    except (TypeError, ValueError):
        return _json({"error": "lag_seconds must be a number"}, 400)
    return _json({"event_id": request.app[SIM].connect_account(account, lag_seconds=lag)})


async def revoke_account(request: web.Request) -> web.Response:
    """`{account}` -> `{event_id}`: revokes access to the account now."""
    account = str((await _body(request)).get("account", ""))
    if not account.startswith("acct_"):
        return _json({"error": "expected an acct_... id"}, 400)
    return _json({"event_id": request.app[SIM].revoke_account(account)})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/_sim/events", add_events)
    r.add_post("/_sim/config", set_config)
    r.add_get("/_sim/config", get_config)
    r.add_get("/_sim/truth", truth)
    r.add_get("/_sim/counters", counters)
    r.add_post("/_sim/warm", warm)
    r.add_post("/_sim/counters/reset", reset_counters)
    r.add_get("/_sim/webhooks", webhooks)
    r.add_post("/_sim/webhooks", add_webhook)
    r.add_post("/_sim/accounts/connect", connect_account)
    r.add_post("/_sim/accounts/revoke", revoke_account)
