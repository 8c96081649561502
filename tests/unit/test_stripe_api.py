"""StripeClient against a scripted local server: retries, error mapping, headers, key hygiene."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import structlog

from ingestor.config import Secret, StripeConfig
from ingestor.errors import (
    ClosedError,
    ConfigError,
    CursorExpired,
    MalformedResponse,
    StripeAuthError,
    StripeConnectionError,
    StripeError,
    StripeInvalidRequest,
    StripeNotFound,
    StripeRateLimited,
    StripeServerError,
)
from ingestor.metrics import REGISTRY
from ingestor.ratelimit import RateBudget
from ingestor.stripe_api import StripeClient, endpoint_template
from tests.unit.stripe_stub import Reply, StripeStub, error

KEY = "sk_test_51SECRETkeyNEVERshown"
OK = Reply(json={"object": "list", "data": [], "has_more": False})


class Sleeps:
    """Records backoff sleeps instead of waiting them out."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await asyncio.sleep(0)


def config(base: str, **kw: Any) -> StripeConfig:
    values: dict[str, Any] = {
        "api_key": Secret(KEY),
        "api_base": base,
        "max_retries": 4,
        "backoff_base": 0.001,
        "backoff_max": 0.01,
        "request_timeout": 5.0,
    }
    values.update(kw)
    return StripeConfig(**values)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def client(stub: StripeStub, sleeps: Sleeps) -> AsyncIterator[StripeClient]:
    cfg = config(stub.base)
    async with StripeClient(cfg, budget=RateBudget(1000.0), sleep=sleeps, stall_timeout=0.3) as c:
        yield c


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"{name}_total", labels) or 0.0


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (error(500, "boom", type="api_error"), "server_error"),
        (
            Reply(
                status=503, body=b"<html>503 Service Unavailable</html>", content_type="text/html"
            ),
            "server_error",
        ),
        (error(409, "lock timeout", type="idempotency_error"), "conflict"),
        (
            Reply(action="truncate", json={"object": "list", "data": [{"id": "x" * 64}]}),
            "malformed",
        ),
        (Reply(body=b'{"object": "list", "data": [', content_type="application/json"), "malformed"),
        (Reply(json=[1, 2, 3]), "malformed"),
        (Reply(body=b"<html>maintenance</html>", content_type="text/html"), "malformed"),
        (Reply(action="stall"), "connection"),
    ],
    ids=["500", "503-html", "409", "truncated", "cut-json", "json-array", "html-200", "stall"],
)
async def test_retriable_failures_are_retried_until_success(
    stub: StripeStub, client: StripeClient, sleeps: Sleeps, failure: Reply, reason: str
) -> None:
    before = counter("ingestor_api_retries", reason=reason)
    stub.push(failure, failure, OK)
    body = await client.request_json("GET", "/v1/events")
    assert body == OK.json
    assert len(stub.requests) == 3
    assert len(sleeps.calls) == 2
    assert counter("ingestor_api_retries", reason=reason) == before + 2


async def test_connection_reset_is_retried(
    stub: StripeStub, client: StripeClient, sleeps: Sleeps
) -> None:
    # aiohttp itself re-sends an idempotent request once after a reset; the third reset is ours.
    stub.push(*[Reply(action="reset")] * 3, OK)
    assert await client.request_json("GET", "/v1/events") == OK.json
    assert len(stub.requests) == 4
    assert len(sleeps.calls) >= 1


async def test_connection_refused_exhausts_retries_as_a_retriable_error(sleeps: Sleeps) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but never listening: connections are refused
        cfg = config(f"http://127.0.0.1:{port}", max_retries=2)
        async with StripeClient(cfg, budget=RateBudget(1000.0), sleep=sleeps) as c:
            with pytest.raises(StripeConnectionError) as info:
                await c.request_json("GET", "/v1/events")
    assert info.value.retriable
    assert len(sleeps.calls) == 2


async def test_max_retries_exhausted_raises_the_retriable_error_with_request_id(
    stub: StripeStub, client: StripeClient, sleeps: Sleeps
) -> None:
    stub.fallback = error(502, "bad gateway", type="api_error")
    with pytest.raises(StripeServerError) as info:
        await client.request_json("GET", "/v1/events", max_retries=2)
    assert len(stub.requests) == 3
    assert info.value.retriable
    assert info.value.status == 502
    assert info.value.request_id == "req_3"
    assert "req_3" in str(info.value)
    assert "bad gateway" in str(info.value)


async def test_should_retry_false_stops_retrying_even_a_503(
    stub: StripeStub, client: StripeClient
) -> None:
    stub.push(Reply(status=503, json={"error": {}}, headers={"Stripe-Should-Retry": "false"}), OK)
    with pytest.raises(StripeServerError):
        await client.request_json("GET", "/v1/events")
    assert len(stub.requests) == 1


async def test_should_retry_true_retries_even_a_400(stub: StripeStub, client: StripeClient) -> None:
    failure = error(400, "try again", type="invalid_request_error")
    failure.headers["Stripe-Should-Retry"] = "true"
    stub.push(failure, OK)
    assert await client.request_json("GET", "/v1/events") == OK.json
    assert len(stub.requests) == 2


async def test_429_halves_the_budget_counts_and_retries(stub: StripeStub, sleeps: Sleeps) -> None:
    budget = RateBudget(100.0, burst=100.0)
    before = counter("ingestor_rate_limited")
    stub.push(error(429, "Too many requests", type="rate_limit_error", code="rate_limit"), OK)
    async with StripeClient(config(stub.base), budget=budget, sleep=sleeps) as c:
        assert await c.request_json("GET", "/v1/events") == OK.json
    assert budget.rate < 100.0
    assert budget.rate == pytest.approx(50.0 + 100.0 * 0.005)  # halved, then one success step
    assert counter("ingestor_rate_limited") == before + 1
    assert len(stub.requests) == 2


async def test_retry_after_is_honoured_as_the_minimum_backoff(
    stub: StripeStub, sleeps: Sleeps
) -> None:
    limited = error(429, "slow down", type="rate_limit_error")
    limited.headers["Retry-After"] = "0.5"
    stub.push(limited, OK)
    cfg = config(stub.base, backoff_max=2.0)
    async with StripeClient(cfg, budget=RateBudget(1000.0), sleep=sleeps) as c:
        await c.request_json("GET", "/v1/events")
    assert sleeps.calls == [pytest.approx(0.5)]


async def test_429_exhausted_raises_rate_limited(stub: StripeStub, client: StripeClient) -> None:
    stub.fallback = error(429, "slow down", type="rate_limit_error")
    with pytest.raises(StripeRateLimited) as info:
        await client.request_json("GET", "/v1/events", max_retries=1)
    assert info.value.retriable
    assert len(stub.requests) == 2


@pytest.mark.parametrize(
    ("status", "exc_type"),
    [
        (400, StripeInvalidRequest),
        (401, StripeAuthError),
        (403, StripeAuthError),
        (404, StripeNotFound),
        (422, StripeInvalidRequest),
    ],
)
async def test_client_errors_map_to_their_type_and_are_not_retried(
    stub: StripeStub, client: StripeClient, status: int, exc_type: type[StripeError]
) -> None:
    stub.push(error(status, "nope", type="invalid_request_error", code="resource_missing"), OK)
    with pytest.raises(exc_type) as info:
        await client.request_json("GET", "/v1/charges/ch_1ABC")
    assert type(info.value) is exc_type
    assert not info.value.retriable
    assert len(stub.requests) == 1
    assert info.value.status == status
    assert info.value.error_type == "invalid_request_error"
    assert info.value.code == "resource_missing"
    assert "invalid_request_error/resource_missing: nope" in str(info.value)
    assert "req_1" in str(info.value)


@pytest.mark.parametrize(
    "fields",
    [
        {"param": "starting_after", "message": "The event evt_1 is older than 30 days."},
        {"param": "created[gte]", "message": "Timestamp is beyond the 30 days retention period."},
        {"message": "The cursor is too old: events are kept for 30 days."},
    ],
)
async def test_a_cursor_beyond_retention_raises_cursor_expired(
    stub: StripeStub, client: StripeClient, fields: dict[str, str]
) -> None:
    stub.push(error(400, type="invalid_request_error", **fields))
    with pytest.raises(CursorExpired) as info:
        await client.request_json("GET", "/v1/events", params=[("starting_after", "evt_1")])
    assert not info.value.retriable
    assert len(stub.requests) == 1


async def test_an_ordinary_400_on_a_cursor_param_is_not_cursor_expired(
    stub: StripeStub, client: StripeClient
) -> None:
    stub.push(error(400, "No such event: 'evt_x'", param="starting_after"))
    with pytest.raises(StripeInvalidRequest) as info:
        await client.request_json("GET", "/v1/events")
    assert not isinstance(info.value, CursorExpired)


async def test_v1_headers_version_auth_account_and_user_agent(
    stub: StripeStub, client: StripeClient
) -> None:
    stub.push(OK, OK)
    await client.request_json("GET", "/v1/events", account="acct_123")
    await client.request_json("GET", "/v1/events")
    first, second = stub.requests
    assert first.headers["Authorization"] == f"Bearer {KEY}"
    assert first.headers["Stripe-Version"] == "2026-10-28.endive"
    assert first.headers["Stripe-Account"] == "acct_123"
    assert "Stripe-Context" not in first.headers
    assert "ingestor" in first.headers["User-Agent"]
    assert "Stripe-Account" not in second.headers
    assert second.headers["Stripe-Version"] == "2026-10-28.endive"


async def test_v2_sends_the_account_as_stripe_context(
    stub: StripeStub, client: StripeClient
) -> None:
    stub.push(OK)
    await client.request_json("GET", "/v2/core/events", account="acct_9", api="v2")
    (seen,) = stub.requests
    assert seen.headers["Stripe-Context"] == "acct_9"
    assert "Stripe-Account" not in seen.headers
    assert seen.headers["Stripe-Version"] == "2026-10-28.endive"


async def test_params_and_a_path_with_query_are_merged(
    stub: StripeStub, client: StripeClient
) -> None:
    stub.push(OK)
    await client.request_json(
        "GET", "/v2/core/events?page=tok_abc", params=[("types", "a.b"), ("types", "c.d")]
    )
    assert stub.requests[0].path == "/v2/core/events"
    assert stub.requests[0].query == [("page", "tok_abc"), ("types", "a.b"), ("types", "c.d")]


async def test_an_absolute_url_under_the_api_base_is_followed(
    stub: StripeStub, client: StripeClient
) -> None:
    stub.push(Reply(json={"id": "ch_1", "object": "charge"}))
    body = await client.request_json("GET", f"{stub.base}/v1/charges/ch_1")
    assert body == {"id": "ch_1", "object": "charge"}
    assert stub.requests[0].path == "/v1/charges/ch_1"


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.invalid/v1/charges/ch_1",
        "http://127.0.0.2:{port}/v1/charges/ch_1",
        "http://127.0.0.1:1/v1/charges/ch_1",
        "https://127.0.0.1:{port}/v1/charges/ch_1",
        "//evil.invalid/v1/charges",
    ],
)
async def test_an_absolute_url_on_another_origin_is_refused_without_sending(
    stub: StripeStub, client: StripeClient, url: str
) -> None:
    with pytest.raises(StripeInvalidRequest, match="outside the API origin") as info:
        await client.request_json("GET", url.format(port=stub.port))
    assert not info.value.retriable
    assert stub.requests == []


@pytest.mark.parametrize(
    ("base", "path", "params"),
    [
        ("http://127.0.0.1:9", "/v1/customers/cus_1", []),
        ("HTTP://Stripe.Local:9/", "/v1/events", [("limit", "100"), ("types[]", "a b")]),
        ("http://127.0.0.1:9/prefix/", "/v2/core/events", [("created[gte]", "2026-01-01")]),
        ("http://127.0.0.1:9", "/v1/x\n/y", []),  # urlsplit drops the newline
        ("http://127.0.0.1:9", "/v1/x#frag", [("a", "1")]),
        ("http://127.0.0.1:9", "/v1/x?b=2", [("a", "1")]),
    ],
)
def test_a_bare_path_gives_the_url_the_general_split_gives(
    base: str, path: str, params: list[tuple[str, str]]
) -> None:
    """The shortcut for plain paths (no query, fragment or control characters) builds the
    same URL and path as splitting the whole URL, whatever api_base's case and prefix."""
    client = StripeClient(config(base))
    split = urlsplit(client._base + path)
    query = "&".join(x for x in (split.query, urlencode(params)) if x)
    expected = f"{split.scheme}://{split.netloc}{split.path}" + (f"?{query}" if query else "")
    assert client._url(path, params) == (expected, split.path)


def test_a_live_key_over_plain_http_is_refused() -> None:
    cfg = config("http://127.0.0.1:9", api_key=Secret("sk_live_abcdef"))
    with pytest.raises(ConfigError, match="https") as info:
        StripeClient(cfg)
    assert "sk_live_abcdef" not in str(info.value) + repr(info.value)


async def test_the_key_never_appears_in_errors_reprs_or_logs(
    stub: StripeStub, client: StripeClient
) -> None:
    # A misbehaving server echoes the key back; it must still not leak.
    stub.push(
        error(500, f"internal error for {KEY}"), error(401, f"Invalid API Key provided: {KEY}")
    )
    with structlog.testing.capture_logs() as logs, pytest.raises(StripeAuthError) as info:
        await client.request_json("GET", "/v1/events", account="acct_1")
    assert len(logs) == 2
    texts = [str(info.value), repr(info.value), repr(client), repr(client.budget), repr(logs)]
    texts.append(repr(info.value.__cause__))
    assert all(KEY not in t for t in texts)
    assert "[key]" in str(info.value)


async def test_each_failure_logs_one_warning_with_request_id_endpoint_status_attempt(
    stub: StripeStub, client: StripeClient
) -> None:
    stub.push(error(500, "a"), error(503, "b"), OK)
    with structlog.testing.capture_logs() as logs:
        await client.request_json("GET", "/v1/charges/ch_1XYZ", account="acct_7")
    assert [e["log_level"] for e in logs] == ["warning", "warning"]
    assert [e["request_id"] for e in logs] == ["req_1", "req_2"]
    assert [e["status"] for e in logs] == [500, 503]
    assert [e["attempt"] for e in logs] == [1, 2]
    assert all(e["endpoint"] == "/v1/charges/{id}" and e["account"] == "acct_7" for e in logs)


async def test_every_attempt_is_counted_under_the_endpoint_template(
    stub: StripeStub, client: StripeClient
) -> None:
    labels = {"endpoint": "/v1/charges/{id}", "status": "500"}
    ok = {"endpoint": "/v1/charges/{id}", "status": "200"}
    before, before_ok = (
        counter("ingestor_api_requests", **labels),
        counter("ingestor_api_requests", **ok),
    )
    stub.push(error(500, "x"), Reply(json={"id": "ch_2"}))
    await client.request_json("GET", "/v1/charges/ch_2AbCdEf")
    assert counter("ingestor_api_requests", **labels) == before + 1
    assert counter("ingestor_api_requests", **ok) == before_ok + 1


def test_endpoint_template_replaces_ids_and_drops_the_query() -> None:
    assert endpoint_template("/v1/charges/ch_3MmlLrLkdIwHu7ix0snN0B15") == "/v1/charges/{id}"
    assert endpoint_template("/v1/events?limit=100") == "/v1/events"
    assert endpoint_template("/v2/core/events/evt_test_65R9Ijk8") == "/v2/core/events/{id}"
    assert endpoint_template("/v1/billing/meter_event_adjustments") == (
        "/v1/billing/meter_event_adjustments"
    )
    assert endpoint_template("/v1/customers/cus_1/sources/card_2") == (
        "/v1/customers/{id}/sources/{id}"
    )


async def test_post_sends_form_data_with_one_idempotency_key_across_retries(
    stub: StripeStub, client: StripeClient
) -> None:
    stub.push(error(500, "x"), Reply(json={"id": "x"}))
    await client.request_json("POST", "/v1/things", data={"a": "1", "b": "two"})
    first, second = stub.requests
    assert first.body == b"a=1&b=two"
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]


async def test_extra_budgets_are_spent_by_each_request(stub: StripeStub) -> None:
    now = [0.0]
    waited: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waited.append(seconds)
        now[0] += seconds

    sweep = RateBudget(2.0, burst=1.0, clock=lambda: now[0], sleep=fake_sleep, report=False)
    stub.push(OK, OK)
    async with StripeClient(config(stub.base), budget=RateBudget(1000.0)) as c:
        await c.request_json("GET", "/v1/events", extra_budgets=[sweep])
        assert waited == []
        await c.request_json("GET", "/v1/events", extra_budgets=[sweep])
    assert waited == [pytest.approx(0.5)]  # the second request waited for a sweep token


async def test_a_closed_client_refuses_reuse_and_closing_twice_is_safe(stub: StripeStub) -> None:
    stub.push(OK)
    client = StripeClient(config(stub.base), budget=RateBudget(1000.0))
    async with client:
        await client.request_json("GET", "/v1/events")
    assert client.closed
    await client.close()
    with pytest.raises(ClosedError):
        await client.request_json("GET", "/v1/events")
    with pytest.raises(ClosedError):
        async with client:
            pass
    assert len(stub.requests) == 1


async def test_malformed_from_a_parse_hook_is_retried_and_carries_the_request_id(
    stub: StripeStub, client: StripeClient
) -> None:
    def parse(body: dict[str, Any]) -> str:
        if "ok" not in body:
            raise MalformedResponse("no ok")
        return str(body["ok"])

    stub.push(Reply(json={"nope": 1}), Reply(json={"ok": "yes"}))
    response = await client.request("GET", "/v1/x", parse=parse)
    assert (response.body, response.request_id, response.status) == ("yes", "req_2", 200)
    stub.fallback = Reply(json={"nope": 1})
    with pytest.raises(MalformedResponse) as info:
        await client.request("GET", "/v1/x", parse=parse, max_retries=0)
    assert info.value.request_id == "req_3"
    assert info.value.retriable


async def test_closing_during_backoff_stops_the_retry_loop_with_closed_error(
    stub: StripeStub,
) -> None:
    holder: list[StripeClient] = []

    async def close_while_sleeping(seconds: float) -> None:
        await holder[0].close()

    stub.fallback = error(500, "x")
    async with StripeClient(
        config(stub.base), budget=RateBudget(1000.0), sleep=close_while_sleeping
    ) as c:
        holder.append(c)
        with pytest.raises(ClosedError):
            await c.request_json("GET", "/v1/events")
    assert len(stub.requests) == 1


async def test_files_requests_also_spend_and_slow_the_files_budget(
    stub: StripeStub, client: StripeClient
) -> None:
    """A resource-specific 429 on a Files read slows the Files read limit (20/s), and a 429
    on another endpoint leaves that limit alone."""
    limited = error(429, "slow down", type="rate_limit_error")
    limited.headers["Stripe-Rate-Limited-Reason"] = "resource-specific"
    files = client.limits.files_read
    stub.push(limited, Reply(json={"id": "file_1"}))
    await client.request_json("GET", "/v1/files/file_1XYZ")
    assert files.rate < 20.0
    rate_after_files = files.rate
    stub.push(limited, OK)
    await client.request_json("GET", "/v1/events")
    assert files.rate == rate_after_files  # other endpoints leave it alone


async def test_raised_error_carries_stripe_should_retry_and_retry_after(
    stub: StripeStub, client: StripeClient
) -> None:
    """The headers of the final answer travel on the error, for callers that retry again."""
    final = error(503, "busy", type="api_error")
    final.headers.update({"Stripe-Should-Retry": "false", "Retry-After": "2"})
    stub.push(final, error(500, "plain", type="api_error"))
    with pytest.raises(StripeServerError) as marked:
        await client.request_json("GET", "/v1/events", max_retries=0)
    assert (marked.value.should_retry, marked.value.retry_after) == (False, 2.0)
    with pytest.raises(StripeServerError) as plain:
        await client.request_json("GET", "/v1/events", max_retries=0)
    assert (plain.value.should_retry, plain.value.retry_after) == (None, None)
