"""Simulator over HTTP on 127.0.0.1: auth, request ids, faults, rate limit, control surface."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from ingestor.sim import SimServer, load_scenario
from ingestor.sim.scenario import HERE

AUTH = {"Authorization": "Bearer sk_test_unit"}


@pytest.fixture
async def server() -> AsyncIterator[SimServer]:
    scenario = dataclasses.replace(load_scenario(None), history_events=200, history_bursts=0)
    async with SimServer(scenario, seed=3) as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


async def test_auth_accepts_test_keys_and_rejects_others_with_stripe_errors(
    server: SimServer,
) -> None:
    """Bearer and Basic sk_test_/rk_test_ keys pass; a missing or live key is a 401 with
    Stripe's error JSON; every response carries a req_ Request-Id."""
    basic = "Basic " + base64.b64encode(b"rk_test_abc:").decode()
    async with aiohttp.ClientSession() as s:
        for headers, status in (
            ({"Authorization": "Bearer sk_test_ok"}, 200),
            ({"Authorization": basic}, 200),
            ({}, 401),
            ({"Authorization": "Bearer sk_live_nope1234"}, 401),
        ):
            async with s.get(server.url + "/v1/events", headers=headers) as r:
                assert r.status == status
                assert r.headers["Request-Id"].startswith("req_")
                body = await r.json()
                if status == 401:
                    assert body["error"]["type"] == "invalid_request_error"
                    assert body["error"]["message"]


async def test_bad_params_are_400(server: SimServer, http: aiohttp.ClientSession) -> None:
    """Unknown parameters, bad limits and both cursors are 400 invalid_request_error."""
    for query in ("limit=0", "limit=abc", "bogus=1", "starting_after=a&ending_before=b"):
        async with http.get(f"{server.url}/v1/events?{query}") as r:
            assert r.status == 400, query
            assert (await r.json())["error"]["type"] == "invalid_request_error"


async def test_faults_produce_the_documented_responses(
    server: SimServer, http: aiohttp.ClientSession
) -> None:
    """500/409 carry Stripe-Should-Retry: true and JSON; 503 is HTML; reset and truncate break
    the connection; a stall answers late but answers."""
    sim = server.sim
    url = server.url + "/v1/events?limit=5"
    sim.set_faults(error_500=1.0)
    async with http.get(url) as r:
        assert r.status == 500
        assert r.headers["Stripe-Should-Retry"] == "true"
        assert (await r.json())["error"]["type"] == "api_error"
    sim.set_faults(error_500=0.0, conflict_409=1.0)
    async with http.get(url) as r:
        assert r.status == 409
        assert r.headers["Stripe-Should-Retry"] == "true"
        assert (await r.json())["error"]["code"] == "lock_timeout"
    sim.set_faults(conflict_409=0.0, error_503_html=1.0)
    async with http.get(url) as r:
        assert r.status == 503
        assert r.content_type == "text/html"
        assert "<html>" in await r.text()
    sim.set_faults(error_503_html=0.0, reset=1.0)
    with pytest.raises(aiohttp.ClientOSError):
        async with http.get(url) as r:
            await r.read()
    sim.set_faults(reset=0.0, truncate=1.0)
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.get(url) as r:
            await r.read()
    sim.set_faults(truncate=0.0, stall=1.0, stall_seconds=0.2)
    async with http.get(url) as r:
        assert r.status == 200
        assert len((await r.json())["data"]) == 5
    sim.set_faults(stall=0.0)
    counts = sim.counters()["GET /v1/events"]
    assert counts["500"] == counts["409"] == counts["503"] == counts["truncated"] == 1
    assert counts["stall"] == 1
    assert counts["reset"] >= 1


async def test_rate_limit_answers_429_with_reason_header(
    server: SimServer, http: aiohttp.ClientSession
) -> None:
    """Over the configured requests/s the simulator answers 429 rate_limit with
    Stripe-Rate-Limited-Reason, and serves again once back under it."""
    server.sim.set_faults(rate_limit=5)

    async def one() -> tuple[int, dict[str, str], bytes]:
        async with http.get(server.url + "/v1/events?limit=1") as r:
            return r.status, dict(r.headers), await r.read()

    results = await asyncio.gather(*(one() for _ in range(30)))
    limited = [r for r in results if r[0] == 429]
    assert limited
    assert any(r[0] == 200 for r in results)
    assert all(r[1]["Stripe-Rate-Limited-Reason"] for r in limited)
    assert b'"code":"rate_limit"' in limited[0][2]
    server.sim.set_faults(rate_limit=0)
    assert (await one())[0] == 200


async def test_default_scenario_has_a_sandbox_s_limits() -> None:
    """The shipped scenario enforces what Stripe documents for a sandbox key: 25 requests/s
    global and 25/s per operation, with concurrency caps."""
    s = load_scenario(None)
    assert (s.rate_limit, s.endpoint_rate_limit) == (25.0, 25.0)
    assert s.concurrency_limit > 0
    assert s.endpoint_concurrency_limit > 0


async def test_endpoint_rate_limit_refuses_one_operation_and_serves_the_others(
    server: SimServer, http: aiohttp.ClientSession
) -> None:
    """Over one operation's own limit the simulator answers 429 with reason endpoint-rate,
    while another operation is still served: the limits are per operation."""
    server.sim.set_faults(rate_limit=0, endpoint_rate_limit=3)

    async def status(path: str) -> tuple[int, str | None]:
        async with http.get(server.url + path) as r:
            await r.read()
            return r.status, r.headers.get("Stripe-Rate-Limited-Reason")

    v1 = await asyncio.gather(*(status("/v1/events?limit=1") for _ in range(8)))
    assert v1.count((200, None)) == 3
    assert v1.count((429, "endpoint-rate")) == 5
    assert await status("/v2/core/events?limit=1") == (200, None)


async def test_concurrency_limits_answer_429_with_their_reason(
    server: SimServer, http: aiohttp.ClientSession
) -> None:
    """Requests beyond the in-flight cap of an operation, or over all operations, are refused
    with endpoint-concurrency or global-concurrency; slots free once responses are sent."""
    server.sim.set_faults(latency_ms=(200.0, 200.0), endpoint_concurrency_limit=2)

    async def status(path: str) -> tuple[int, str | None]:
        async with http.get(server.url + path) as r:
            await r.read()
            return r.status, r.headers.get("Stripe-Rate-Limited-Reason")

    got = await asyncio.gather(*(status("/v1/events?limit=1") for _ in range(5)))
    assert sorted(got, key=str) == [(200, None)] * 2 + [(429, "endpoint-concurrency")] * 3
    server.sim.set_faults(endpoint_concurrency_limit=0, concurrency_limit=3)
    paths = ["/v1/events?limit=1", "/v2/core/events?limit=1"] * 3
    got = await asyncio.gather(*(status(p) for p in paths))
    assert got.count((429, "global-concurrency")) == 3
    server.sim.set_faults(latency_ms=(0.0, 0.0))
    assert await status("/v1/events?limit=1") == (200, None)


async def test_control_surface_adds_events_and_reports_truth_and_counters(
    server: SimServer, http: aiohttp.ClientSession
) -> None:
    """POST /_sim/events makes events listable and part of /_sim/truth; counters count per
    endpoint template and status and reset to empty."""
    async with http.post(
        server.url + "/_sim/events",
        json={"count": 3, "type": "invoice.paid", "account": "acct_1SimConnectAlpha01"},
    ) as r:
        new_ids = (await r.json())["ids"]
    async with http.get(
        server.url + "/v1/events?limit=3",
        headers={"Stripe-Account": "acct_1SimConnectAlpha01"},
    ) as r:
        listed = await r.json()
    assert [e["id"] for e in listed["data"]] == list(reversed(new_ids))
    assert all(e["account"] == "acct_1SimConnectAlpha01" for e in listed["data"])
    async with http.get(server.url + "/_sim/truth") as r:
        truth = await r.json()
    assert set(new_ids) <= {row["id"] for row in truth["events"]}
    assert truth["count"] == len(truth["events"])
    async with http.get(server.url + "/_sim/counters") as r:
        assert (await r.json())["GET /v1/events"]["200"] == 1
    async with http.post(server.url + "/_sim/counters/reset") as r:
        assert r.status == 200
    async with http.get(server.url + "/_sim/counters") as r:
        assert await r.json() == {}


async def test_warm_renders_every_event_and_changes_no_answer(
    http: aiohttp.ClientSession,
) -> None:
    """POST /_sim/warm renders every stored event into the cache before any request, and the
    pages it then serves are byte for byte those a cold simulator of the same plan serves."""
    scenario = dataclasses.replace(
        load_scenario(None), history_events=200, history_bursts=0, start_time=time.time() // 1
    )
    pages = []
    for warm in (False, True):
        async with SimServer(scenario, seed=3) as srv:
            assert srv.sim.views.cache == {}
            if warm:
                async with http.post(srv.url + "/_sim/warm") as r:
                    rendered = (await r.json())["rendered"]
                assert rendered == len(srv.sim.events) >= 200
                assert len(srv.sim.views.cache) == rendered
            async with http.get(srv.url + "/v1/events?limit=100") as r:
                pages.append(await r.read())
    assert pages[0] == pages[1]
    assert len(orjson.loads(pages[0])["data"]) == 100


async def test_objects_get_newer_versions_and_deleted_ones_404(
    server: SimServer, http: aiohttp.ClientSession
) -> None:
    """Each event on an object bumps the version a later GET shows; a deleted customer is a 404
    resource_missing."""
    async with http.post(
        server.url + "/_sim/events", json={"count": 1, "type": "customer.created"}
    ) as r:
        [first] = (await r.json())["ids"]
    async with http.get(f"{server.url}/v1/events/{first}") as r:
        customer = (await r.json())["data"]["object"]
    url = f"{server.url}/v1/customers/{customer['id']}"
    async with http.get(url) as r:
        before = int((await r.json())["metadata"]["sim_version"])
    for event_type in ("customer.updated", "customer.deleted"):
        await (
            await http.post(
                server.url + "/_sim/events",
                json={"count": 1, "type": event_type, "object_id": customer["id"]},
            )
        ).read()
        if event_type == "customer.updated":
            async with http.get(url) as r:
                assert int((await r.json())["metadata"]["sim_version"]) == before + 1
    async with http.get(url) as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "resource_missing"


def test_every_shipped_scenario_loads() -> None:
    """All TOML scenarios shipped beside the simulator parse into valid Scenarios."""
    files = sorted(HERE.glob("*.toml"))
    assert {p.stem for p in files} >= {"default", "demo", "bench"}
    for path in files:
        assert load_scenario(str(path)).name == path.stem


async def test_accounts_connect_and_revoke_over_the_control_surface(
    server: SimServer, http: aiohttp.ClientSession
) -> None:
    """`POST /_sim/accounts/connect` lists the account and makes it readable;
    `/_sim/accounts/revoke` takes it off `GET /v1/accounts` and answers 403 for it; both
    return the id of the account.application.* event, and a bad id is a 400."""
    acct = "acct_1SimHttpLate000000000"
    async with http.post(server.url + "/_sim/accounts/connect", json={"account": acct}) as r:
        assert r.status == 200
        authorized = (await r.json())["event_id"]
    async with http.get(server.url + "/v1/accounts", params={"limit": "100"}) as r:
        assert acct in [a["id"] for a in (await r.json())["data"]]
    async with http.get(server.url + "/v1/events/" + authorized) as r:
        event = await r.json()
        assert (event["type"], event["account"]) == ("account.application.authorized", acct)
    async with http.post(server.url + "/_sim/accounts/revoke", json={"account": acct}) as r:
        assert r.status == 200
    async with http.get(server.url + "/v1/accounts", params={"limit": "100"}) as r:
        assert acct not in [a["id"] for a in (await r.json())["data"]]
    async with http.get(server.url + "/v1/events", headers={"Stripe-Account": acct}) as r:
        assert r.status == 403
    async with http.post(server.url + "/_sim/accounts/revoke", json={"account": "x"}) as r:
        assert r.status == 400
