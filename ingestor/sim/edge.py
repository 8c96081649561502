"""The API edge: request ids, auth, Stripe's limiters, latency, injected faults and counters."""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import os
import socket
import struct

from aiohttp import web
from aiohttp.typedefs import Handler

from ingestor.sim.faults import choose_fault
from ingestor.sim.ids import token
from ingestor.sim.keys import LIMITERS, SIM
from ingestor.sim.problems import ApiError

_request_numbers = itertools.count(int.from_bytes(os.urandom(4), "big"))
HTML_503 = (
    "<html><head><title>503 Service Temporarily Unavailable</title></head><body>"
    "<center><h1>503 Service Temporarily Unavailable</h1></center></body></html>"
)


def _api_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip()).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            return ""
    return None


def check_auth(request: web.Request) -> None:
    key = _api_key(request)
    if not key:
        raise ApiError(
            401,
            "You did not provide an API key. You need to provide your API key in the "
            "Authorization header, using Bearer auth "
            "(e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
        )
    if not key.startswith(("sk_test_", "rk_test_")) or len(key) <= len("sk_test_"):
        shown = key[:8] + "*" * 4 + key[-4:] if len(key) > 12 else "****"
        raise ApiError(401, f"Invalid API Key provided: {shown}", code="api_key_invalid")


def _endpoint(request: web.Request) -> str:
    resource = request.match_info.route.resource
    template = resource.canonical if resource is not None else "(unmatched)"
    return f"{request.method} {template}"


def _reset(request: web.Request) -> None:
    # SO_LINGER 0 turns close into a TCP RST: the client sees "connection reset by peer".
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _truncated(request: web.Request, resp: web.Response) -> web.StreamResponse:
    body = resp.body if isinstance(resp.body, bytes) else b""
    out = web.StreamResponse(status=resp.status, headers=resp.headers)
    out.content_length = len(body)
    await out.prepare(request)
    await out.write(body[: max(1, len(body) // 2)])
    if request.transport is not None:
        request.transport.close()  # flushes what was written, then FIN: a short body
    return out


@web.middleware
async def stripe_edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/_sim/"):
        return await handler(request)
    sim = request.app[SIM]
    rid = "req_" + token(next(_request_numbers))
    v2 = request.path.startswith("/v2/")
    endpoint = _endpoint(request)
    fault = None
    limiters = request.app[LIMITERS]
    admitted = False
    try:
        sim.tick()
        check_auth(request)
        reason = await limiters.admit(
            endpoint,
            rate=sim.rate_limit,
            endpoint_rate=sim.endpoint_rate_limit,
            concurrency=sim.concurrency_limit,
            endpoint_concurrency=sim.endpoint_concurrency_limit,
        )
        if reason is not None:
            what = "concurrent requests" if reason.endswith("concurrency") else "Request rate"
            raise ApiError(
                429,
                f"{what} limit exceeded. Learn more about rate limits here "
                "https://stripe.com/docs/rate-limits.",
                type="rate_limit" if v2 else "invalid_request_error",
                code="rate_limit",
                headers={"Stripe-Rate-Limited-Reason": reason},
            )
        admitted = True
        lo, hi = sim.latency_ms
        if hi > 0:
            await asyncio.sleep(sim.fault_rng.uniform(lo, hi) / 1000.0)
        if sim.faults_apply(request.path):
            fault = choose_fault(sim.faults, sim.fault_rng)
        if fault == "error_500":
            raise ApiError(
                500,
                "An unknown error occurred while processing your request.",
                type="api_error",
                headers={"Stripe-Should-Retry": "true"},
            )
        if fault == "conflict_409":
            raise ApiError(
                409,
                "This object cannot be accessed right now because another API request or "
                "Stripe process is currently accessing it.",
                code="lock_timeout",
                headers={"Stripe-Should-Retry": "true"},
            )
        if fault == "error_503_html":
            sim.count(endpoint, "503")
            return web.Response(
                status=503, text=HTML_503, content_type="text/html", headers={"Request-Id": rid}
            )
        if fault == "reset":
            sim.count(endpoint, "reset")
            _reset(request)
            return web.Response(status=500)
        if fault == "stall":
            sim.count(endpoint, "stall")
            await asyncio.sleep(sim.faults.stall_seconds)
        resp = await handler(request)
    except ApiError as exc:
        resp = web.Response(
            status=exc.status, body=exc.body(rid, v2=v2), content_type="application/json"
        )
        resp.headers.update(exc.headers)
    except web.HTTPException as exc:
        # aiohttp's own 404/405 for unknown paths, answered in Stripe's shape.
        err = ApiError(exc.status, f"Unrecognized request URL ({request.method}: {request.path}).")
        resp = web.Response(status=exc.status, body=err.body(rid), content_type="application/json")
    finally:
        if admitted:
            limiters.release(endpoint)
    resp.headers["Request-Id"] = rid
    if fault == "truncate" and isinstance(resp, web.Response):
        sim.count(endpoint, "truncated")
        return await _truncated(request, resp)
    sim.count(endpoint, str(resp.status))
    return resp
