"""InProcessTransport: the real StripeClient answered by the simulator's app with no sockets, equal
to the same simulator over real sockets, faults included, and in simulated time."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from ingestor import clock
from ingestor.clock import LoopClock
from ingestor.config import Secret, StripeConfig
from ingestor.errors import (
    ClosedError,
    MalformedResponse,
    StripeAuthError,
    StripeConnectionError,
    StripeError,
    StripeNotFound,
    StripeServerError,
)
from ingestor.events import Event
from ingestor.pages import Page, fetch_object, v1_pages, v2_pages
from ingestor.ratelimit import RateBudget
from ingestor.sim import SimServer, Simulator, load_scenario
from ingestor.sim.inprocess import InProcessTransport
from ingestor.sim.scenario import Faults, Scenario
from ingestor.stripe_api import StripeClient
from ingestor.transport import Transport

START = 1_790_000_000
KEY = Secret("sk_test_inprocess")
# Any host will do in-process; only the path and query reach the app.
SIM_BASE = "http://stripe.sim"


def scenario(**changes: Any) -> Scenario:
    values: dict[str, Any] = {
        "start_time": START,
        "history_events": 400,
        "history_bursts": 1,
        "burst_size": 120,
        "v2_share": 0.4,
        "accounts": (),
    }
    values.update(changes)
    return dataclasses.replace(load_scenario(None), **values)


def client(base: str, transport: Transport | None = None, **kw: Any) -> StripeClient:
    values: dict[str, Any] = {
        "api_key": KEY,
        "api_base": base,
        "max_retries": 0,
        "backoff_base": 0.001,
        "backoff_max": 0.01,
        "request_timeout": 5.0,
    }
    values.update(kw)
    return StripeClient(
        StripeConfig(**values), transport=transport, budget=RateBudget(10_000.0), stall_timeout=0.3
    )


@pytest.fixture
async def server() -> AsyncIterator[SimServer]:
    async with SimServer(scenario(), seed=17) as srv:
        yield srv


async def walk(c: StripeClient) -> dict[str, Any]:
    """What a reader sees: every v1 and v2 page (events and cursors), and two object fetches."""
    v1: list[tuple[list[Event], str | None]] = []
    async for page in v1_pages(c, account=None, limit=37):
        v1.append((page.events, page.cursor))
    v2: list[Page] = [page async for page in v2_pages(c, account=None, limit=29)]
    thin = next(e for page in v2 for e in page.events if e.related_url)
    assert thin.related_url is not None
    related = await fetch_object(c, thin.related_url, account=None, api="v2")
    with pytest.raises(StripeNotFound):
        await fetch_object(c, "/v1/customers/cus_doesnotexist000000000000", account=None, api="v1")
    return {
        "v1": v1,
        "v2": [(p.events, p.has_more) for p in v2],
        "related": related,
    }


async def test_page_walks_and_object_fetch_equal_those_over_real_sockets(
    server: SimServer,
) -> None:
    """A v1 walk, a v2 walk (next_page_url) and a related-object fetch through the in-process
    transport return exactly the events, cursors and object that the same simulator serves
    over a real socket."""
    async with client(server.url) as real:
        over_sockets = await walk(real)
    transport = InProcessTransport.for_simulator(server.sim)
    async with transport, client(SIM_BASE, transport) as local:
        in_process = await walk(local)
    assert sum(len(events) for events, _ in over_sockets["v1"]) > 200
    assert len(over_sockets["v2"]) > 3
    assert in_process == over_sockets


FAULTS = [
    ("reset", StripeConnectionError, "no usable response"),
    ("truncate", MalformedResponse, "truncated response body"),
    ("stall", StripeConnectionError, "timed out"),
    ("error_503_html", StripeServerError, "HTTP 503"),
    ("conflict_409", StripeServerError, "lock_timeout"),
]


@pytest.mark.parametrize(("fault", "error", "text"), FAULTS, ids=[f[0] for f in FAULTS])
@pytest.mark.parametrize("path", ["sockets", "in-process"])
async def test_each_injected_fault_maps_to_the_same_error_on_both_paths(
    server: SimServer, fault: str, error: type[StripeError], text: str, path: str
) -> None:
    """The simulator's faults reach the client as the same StripeError class over sockets and
    in process: reset -> connection error, truncate -> malformed (truncated body), stall ->
    timeout, 503 HTML and 409 -> server error."""
    server.sim.set_faults(dataclasses.replace(Faults(stall_seconds=2.0), **{fault: 1.0}))
    transport = None if path == "sockets" else InProcessTransport.for_simulator(server.sim)
    async with client(server.url if transport is None else SIM_BASE, transport) as c:
        with pytest.raises(error, match=text) as info:
            await c.request_json("GET", "/v1/events", params=[("limit", "3")])
    assert type(info.value) is error
    if fault in ("truncate", "error_503_html", "conflict_409"):
        assert str(info.value.request_id).startswith("req_")


async def test_auth_and_unknown_paths_go_through_the_edge_in_process() -> None:
    """The simulator's edge middleware runs in process: a live key is a 401 and an unknown
    path a 404 in Stripe's error shape, each with a request id."""
    sim = Simulator(scenario(history_events=20, history_bursts=0), seed=1)
    async with InProcessTransport.for_simulator(sim) as transport:
        async with client(SIM_BASE, transport, api_key=Secret("sk_test_")) as bad:
            with pytest.raises(StripeAuthError) as auth:
                await bad.request_json("GET", "/v1/events")
        assert auth.value.status == 401
        assert auth.value.request_id
        async with client(SIM_BASE, transport) as good:
            with pytest.raises(StripeNotFound, match="Unrecognized request URL"):
                await good.request_json("GET", "/v1/nothing_here")
            ok = await good.request_json("GET", "/v1/events", params=[("limit", "2")])
            assert len(ok["data"]) == 2


async def test_post_form_data_and_handler_failures_in_process() -> None:
    """Any aiohttp app can answer: a POST's form body and Idempotency-Key reach the handler, a
    raised HTTP error is answered as itself, and a crashing handler is a 500 as from a server."""

    async def echo(request: web.Request) -> web.Response:
        form = dict(await request.post())
        key = request.headers.get("Idempotency-Key")
        return web.json_response({"form": form, "key": key, "host": request.host})

    async def teapot(request: web.Request) -> web.Response:
        raise web.HTTPConflict(text="{}", content_type="application/json")

    async def crash(request: web.Request) -> web.Response:
        raise RuntimeError("handler bug")

    app = web.Application()
    app.router.add_post("/v1/echo", echo)
    app.router.add_get("/v1/conflict", teapot)
    app.router.add_get("/v1/crash", crash)
    async with InProcessTransport(app) as transport, client(SIM_BASE, transport) as c:
        body = await c.request_json("POST", "/v1/echo", data={"a": "1", "b": "x y&z"})
        assert body["form"] == {"a": "1", "b": "x y&z"}
        assert body["key"]
        assert body["host"] == "stripe.sim"
        with pytest.raises(StripeServerError, match="HTTP 409"):
            await c.request_json("GET", "/v1/conflict")
        with pytest.raises(StripeServerError, match="HTTP 500"):
            await c.request_json("GET", "/v1/crash")


@pytest.mark.looptime
async def test_latency_and_stall_cost_simulated_time_not_real_time() -> None:
    """Under looptime with a LoopClock, the simulator's 200 ms latency makes 20 requests take
    exactly 4 simulated seconds, and a 60 s stall times out after the 0.3 s stall timeout, all in
    far less real time."""
    real = time.perf_counter()
    with clock.use(LoopClock(START * 1000)):
        sim = Simulator(
            scenario(history_events=50, history_bursts=0, latency_min_ms=200, latency_max_ms=200),
            seed=3,
        )
        transport = InProcessTransport.for_simulator(sim)
        async with transport, client(SIM_BASE, transport) as c:
            started = clock.monotonic()
            for _ in range(20):
                await c.request_json("GET", "/v1/events", params=[("limit", "1")])
            assert clock.monotonic() - started == pytest.approx(4.0, abs=1e-3)
            sim.set_faults(Faults(stall_seconds=60.0), stall=1.0)
            started = clock.monotonic()
            with pytest.raises(StripeConnectionError, match="timed out"):
                await c.request_json("GET", "/v1/events")
            assert clock.monotonic() - started == pytest.approx(0.3, abs=1e-3)
    assert time.perf_counter() - real < 5


async def test_closed_transport_refuses_and_client_leaves_a_given_transport_open() -> None:
    """Closing a client does not close a transport it was given; a closed transport refuses
    requests with ClosedError, and closing it twice is safe."""
    sim = Simulator(scenario(history_events=20, history_bursts=0), seed=4)
    transport = InProcessTransport.for_simulator(sim)
    async with client(SIM_BASE, transport):
        pass
    assert not transport.closed
    async with client(SIM_BASE, transport) as again:
        await again.request_json("GET", "/v1/events", params=[("limit", "1")])
    await transport.close()
    await transport.close()
    async with client(SIM_BASE, transport) as after:
        with pytest.raises(ClosedError):
            await after.request_json("GET", "/v1/events")
