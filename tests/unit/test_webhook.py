"""webhook: the receiver verifies, bounds and parses deliveries, then answers from the Ack."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import orjson
import pytest
import structlog

from ingestor import logs
from ingestor.errors import ClosedError, KafkaUnavailable
from ingestor.metrics import REGISTRY
from ingestor.signature import sign
from ingestor.webhook import Ack, Answer, Delivery, WebhookServer, parse_delivery

SECRET = "whsec_unitCurrentSecret0123"
OLD_SECRET = "whsec_unitPreviousSecret987"
MAX_BODY = 4096
READ_TIMEOUT = 0.3

V1_BODY = orjson.dumps(
    {
        "id": "evt_1WebhookUnit",
        "object": "event",
        "type": "charge.succeeded",
        "created": 1_780_000_000,
        "livemode": False,
        "api_version": "2026-10-28.endive",
        "account": "acct_1Connected",
        "data": {"object": {"id": "ch_1Private", "object": "charge", "amount": 4242}},
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
    }
)
V2_BODY = orjson.dumps(
    {
        "id": "evt_test_65Thin",
        "object": "v2.core.event",
        "type": "v2.core.account.updated",
        "created": "2026-05-28T20:26:40.123Z",
        "livemode": False,
        "context": "acct_2Context",
        "related_object": {
            "id": "acct_2Context",
            "type": "v2.core.account",
            "url": "/v2/core/accounts/acct_2Context",
        },
    }
)


class FakeIntake:
    """Records every delivery and answers a fixed Ack (or raises, or stalls)."""

    def __init__(self, ack: Ack = Ack.COMMITTED) -> None:
        self.ack = ack
        self.deliveries: list[Delivery] = []
        self.raise_: Exception | None = None
        self.stall = False
        self.contexts: list[dict[str, object]] = []

    async def __call__(self, delivery: Delivery) -> Ack:
        self.deliveries.append(delivery)
        self.contexts.append(structlog.contextvars.get_contextvars())
        if self.stall:
            await asyncio.sleep(30)
        if self.raise_ is not None:
            raise self.raise_
        return self.ack


@pytest.fixture
def intake() -> FakeIntake:
    return FakeIntake()


@pytest.fixture
async def server(intake: FakeIntake) -> AsyncIterator[WebhookServer]:
    async with WebhookServer(
        intake,
        host="127.0.0.1",
        port=0,
        path="/webhooks/stripe",
        secrets=[SECRET, OLD_SECRET],
        tolerance_seconds=300,
        max_body_bytes=MAX_BODY,
        read_timeout_seconds=READ_TIMEOUT,
        ack_timeout_seconds=0.5,
    ) as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # One connection per request: the fixture's server drops idle keep-alive connections after
    # READ_TIMEOUT (0.3 s), and on a loaded machine a pooled connection can be reused just as the
    # server closes it (connection reset). Keep-alive itself is not what these tests check.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


@pytest.fixture
def log_out() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logs.configure_logging("debug", "json", out)
    yield out
    logs.reset_logging()
    structlog.contextvars.clear_contextvars()


def signed(body: bytes, secret: str = SECRET, at: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if at is None else at
    return {"Stripe-Signature": sign(body, secret, stamp), "Content-Type": "application/json"}


def rejects(reason: str) -> float:
    return REGISTRY.get_sample_value("ingestor_webhook_rejects_total", {"reason": reason}) or 0.0


async def post(
    http: aiohttp.ClientSession, server: WebhookServer, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, object]]:
    async with http.post(server.url, data=body, headers=headers) as r:
        return r.status, await r.json()


async def raw_exchange(server: WebhookServer, data: bytes, wait: float = 5.0) -> bytes:
    """Writes `data` on a fresh connection and returns whatever arrives until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(wait):
            return await reader.read(65536)
    finally:
        writer.close()
        # The server may close first, as it should after a 408/413.
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


# --- accepted deliveries ----------------------------------------------------------------------


async def test_v1_snapshot_event_reaches_the_intake_with_stripes_bytes(
    server: WebhookServer, http: aiohttp.ClientSession, intake: FakeIntake
) -> None:
    """A signed v1 event is answered 200 after the intake commits it; the Delivery carries the
    account, created time and an Event whose raw bytes are exactly the body."""
    status, body = await post(http, server, V1_BODY, signed(V1_BODY))
    assert (status, body["outcome"]) == (200, "committed")
    [delivery] = intake.deliveries
    assert delivery.api == "v1"
    assert (delivery.id, delivery.type) == ("evt_1WebhookUnit", "charge.succeeded")
    assert delivery.account == "acct_1Connected"
    assert delivery.created_ms == 1_780_000_000_000
    assert delivery.notification is None
    assert delivery.event is not None
    assert delivery.event.raw == V1_BODY
    assert delivery.event.object_id == "ch_1Private"


async def test_v2_thin_notification_reaches_the_intake_parsed(
    server: WebhookServer, http: aiohttp.ClientSession, intake: FakeIntake
) -> None:
    """A signed v2.core.event notification becomes a v2 Delivery: account from `context`,
    created from its RFC 3339 time, the notification parsed, no Event."""
    status, _ = await post(http, server, V2_BODY, signed(V2_BODY))
    assert status == 200
    [delivery] = intake.deliveries
    assert (delivery.api, delivery.id, delivery.account) == (
        "v2",
        "evt_test_65Thin",
        "acct_2Context",
    )
    assert delivery.created_ms == 1_780_000_000_123
    assert delivery.event is None
    assert delivery.notification == orjson.loads(V2_BODY)


async def test_rotation_accepts_the_old_and_the_new_secret(
    server: WebhookServer, http: aiohttp.ClientSession, intake: FakeIntake
) -> None:
    """During a rotation (two configured secrets) deliveries signed under either verify, and
    a header carrying one v1 per secret does too."""
    both = {
        "Stripe-Signature": sign(V1_BODY, SECRET, int(time.time()))
        + ","
        + sign(V1_BODY, OLD_SECRET, int(time.time())).split(",")[1]
    }
    for headers in (signed(V1_BODY, SECRET), signed(V1_BODY, OLD_SECRET), both):
        status, _ = await post(http, server, V1_BODY, headers)
        assert status == 200
    assert len(intake.deliveries) == 3


# --- rejected requests ------------------------------------------------------------------------


async def test_forged_signature_is_400_and_never_reaches_the_intake(
    server: WebhookServer, http: aiohttp.ClientSession, intake: FakeIntake
) -> None:
    """A body signed with a secret the receiver does not hold, a tampered body, a missing
    header and a header without v1 are each 400 with their reason counted."""
    cases = [
        (V1_BODY, signed(V1_BODY, "whsec_attackerGuess"), "mismatch"),
        (V1_BODY.replace(b"4242", b"9999"), signed(V1_BODY), "mismatch"),
        (V1_BODY, {}, "no_header"),
        (V1_BODY, {"Stripe-Signature": f"t={int(time.time())},v0=00"}, "no_signature"),
    ]
    for body, headers, reason in cases:
        before = rejects(reason)
        status, answer = await post(http, server, body, headers)
        assert (status, answer["error"]) == (400, reason)
        assert rejects(reason) == before + 1
    assert intake.deliveries == []


async def test_replayed_old_timestamp_is_400(
    server: WebhookServer, http: aiohttp.ClientSession, intake: FakeIntake
) -> None:
    """A correctly signed delivery whose timestamp is 301 s old is refused as stale."""
    before = rejects("stale_timestamp")
    status, answer = await post(http, server, V1_BODY, signed(V1_BODY, at=int(time.time()) - 301))
    assert (status, answer["error"]) == (400, "stale_timestamp")
    assert rejects("stale_timestamp") == before + 1
    assert intake.deliveries == []


async def test_huge_body_is_413_before_it_is_read(
    server: WebhookServer, intake: FakeIntake
) -> None:
    """A Content-Length over the limit is answered 413 and the connection closed while the
    client has sent only its headers; nothing reaches the intake."""
    before = rejects("too_large")
    head = (
        f"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: {100 * 1024**2}\r\n"
        f"Stripe-Signature: t=1,v1=00\r\n\r\n"
    ).encode()
    answer = await raw_exchange(server, head + b"{")
    assert answer.startswith(b"HTTP/1.1 413")
    assert rejects("too_large") == before + 1
    assert intake.deliveries == []


async def test_expect_continue_refuses_an_oversized_body_before_inviting_it(
    server: WebhookServer, intake: FakeIntake
) -> None:
    """With `Expect: 100-continue` and a Content-Length over the limit, the first thing the
    client gets is the 413 (never `100 Continue`), before it has sent any body byte."""
    before = rejects("too_large")
    head = (
        f"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n"
        f"Expect: 100-continue\r\nStripe-Signature: t=1,v1=00\r\n\r\n"
    ).encode()
    answer = await raw_exchange(server, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:40]
    assert b"100 Continue" not in answer
    assert rejects("too_large") == before + 1
    assert intake.deliveries == []


async def test_expect_continue_invites_an_acceptable_body_then_answers_it(
    server: WebhookServer, intake: FakeIntake
) -> None:
    """With `Expect: 100-continue` and a body within the limit, the server answers
    `100 Continue` before the body is sent, then 200 once the signed body arrives."""
    head = (
        f"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: {len(V1_BODY)}\r\n"
        f"Expect: 100-continue\r\nStripe-Signature: {signed(V1_BODY)['Stripe-Signature']}"
        f"\r\nConnection: close\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head)
        async with asyncio.timeout(5):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(V1_BODY)
        async with asyncio.timeout(5):
            final = await reader.read(65536)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert final.startswith(b"HTTP/1.1 200"), final[:40]
    assert len(intake.deliveries) == 1


async def test_an_unknown_expectation_is_417(server: WebhookServer, intake: FakeIntake) -> None:
    """An `Expect` other than 100-continue is answered 417 and nothing reaches the intake."""
    head = (
        f"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: {len(V1_BODY)}\r\n"
        f"Expect: teapot\r\nStripe-Signature: {signed(V1_BODY)['Stripe-Signature']}\r\n\r\n"
    ).encode()
    answer = await raw_exchange(server, head + V1_BODY)
    assert answer.startswith(b"HTTP/1.1 417"), answer[:40]
    assert intake.deliveries == []


async def test_chunked_body_over_the_limit_is_413(
    server: WebhookServer, intake: FakeIntake
) -> None:
    """A chunked body with no Content-Length is cut off at the limit with a 413, even when
    it is correctly signed."""
    body = b'{"object":"event","pad":"' + b"x" * (MAX_BODY + 100) + b'"}'
    sig = signed(body)["Stripe-Signature"]
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(part), part)
        for part in (body[i : i + 1000] for i in range(0, len(body), 1000))
    )
    request = (
        (
            f"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            f"Stripe-Signature: {sig}\r\n\r\n"
        ).encode()
        + chunks
        + b"0\r\n\r\n"
    )
    answer = await raw_exchange(server, request)
    assert answer.startswith(b"HTTP/1.1 413")
    assert intake.deliveries == []


async def test_slow_client_times_out_with_408(server: WebhookServer, intake: FakeIntake) -> None:
    """A client that announces a body and then stalls is answered 408 once the read timeout
    passes, the connection is closed, and nothing reaches the intake."""
    before = rejects("read_timeout")
    sig = signed(V1_BODY)["Stripe-Signature"]
    head = (
        f"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: {len(V1_BODY)}\r\n"
        f"Stripe-Signature: {sig}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    answer = await raw_exchange(server, head + V1_BODY[:20], wait=READ_TIMEOUT + 5)
    assert answer.startswith(b"HTTP/1.1 408")
    assert READ_TIMEOUT <= time.monotonic() - started < READ_TIMEOUT + 4
    assert rejects("read_timeout") == before + 1
    assert intake.deliveries == []


async def test_slow_headers_get_the_connection_closed(
    server: WebhookServer, intake: FakeIntake
) -> None:
    """A client dribbling its request headers a byte every 50 ms (slowloris) has its
    connection closed about the read timeout after connecting, and nothing reaches the intake."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    started = time.monotonic()
    head = b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
    closed_after = None
    try:
        for byte in head:
            if reader.at_eof():
                closed_after = time.monotonic() - started
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)
    except ConnectionError:
        closed_after = time.monotonic() - started
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert closed_after is not None
    assert READ_TIMEOUT <= closed_after < READ_TIMEOUT + 4
    assert intake.deliveries == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"[1, 2]", "malformed_json"),
        (b'{"object": "charge", "id": "ch_1"}', "unknown_object"),
        (b'{"id": "evt_1"}', "unknown_object"),
        (b'{"object": "event", "id": "evt_1"}', "malformed_event"),
        (
            b'{"object": "v2.core.event", "id": "evt_1", "type": "x", "created": "yday"}',
            "malformed_event",
        ),
        (
            b'{"object": "v2.core.event", "id": 5, "type": "x", "created": "2026-01-01T00:00:00Z"}',
            "malformed_event",
        ),
    ],
)
async def test_signed_but_malformed_bodies_are_400(
    server: WebhookServer,
    http: aiohttp.ClientSession,
    intake: FakeIntake,
    body: bytes,
    reason: str,
) -> None:
    """A correctly signed body that is not JSON, not an object, or not a v1/v2 event is 400
    with its reason, and never reaches the intake."""
    status, answer = await post(http, server, body, signed(body))
    assert (status, answer["error"]) == (400, reason)
    assert intake.deliveries == []


async def test_only_post_is_served(server: WebhookServer, http: aiohttp.ClientSession) -> None:
    """GET on the path is 405 with Allow: POST; another path is 404; /metrics is not here."""
    async with http.get(server.url) as r:
        assert r.status == 405
        assert r.headers["Allow"] == "POST"
    base = server.url.removesuffix(server.path)
    for other in ("/metrics", "/healthz", "/webhooks/other"):
        async with http.post(base + other, data=V1_BODY, headers=signed(V1_BODY)) as r:
            assert r.status == 404


# --- acknowledgement --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ack", "status"),
    [(Ack.COMMITTED, 200), (Ack.DUPLICATE, 200), (Ack.IGNORED, 200), (Ack.UNAVAILABLE, 503)],
)
async def test_ack_maps_to_status(
    server: WebhookServer,
    http: aiohttp.ClientSession,
    intake: FakeIntake,
    ack: Ack,
    status: int,
) -> None:
    """Committed, duplicate and ignored are 200; unavailable is 503 so Stripe retries; the
    delivery counter counts the outcome."""

    def count() -> float:
        labels = {"api": "v1", "outcome": ack.value}
        return REGISTRY.get_sample_value("ingestor_webhook_deliveries_total", labels) or 0.0

    before = count()
    intake.ack = ack
    got, answer = await post(http, server, V1_BODY, signed(V1_BODY))
    assert (got, answer["outcome"]) == (status, ack.value)
    assert count() == before + 1


async def test_intake_failure_or_stall_is_5xx(
    server: WebhookServer, http: aiohttp.ClientSession, intake: FakeIntake
) -> None:
    """A retriable error from the intake (Kafka down) is 503, another exception 500, and an
    intake that does not answer within the ack timeout 503: never a 200 without commit."""
    intake.raise_ = KafkaUnavailable("broker down")
    assert (await post(http, server, V1_BODY, signed(V1_BODY)))[0] == 503
    intake.raise_ = RuntimeError("bug")
    assert (await post(http, server, V1_BODY, signed(V1_BODY)))[0] == 500
    intake.raise_ = None
    intake.stall = True
    status, answer = await post(http, server, V1_BODY, signed(V1_BODY))
    assert (status, answer["outcome"]) == (503, "timeout")


async def test_latency_histogram_observes_each_answer(
    server: WebhookServer, http: aiohttp.ClientSession
) -> None:
    """Every answer, accepted or rejected, is observed in the latency histogram by status."""

    def seen(status: str) -> float:
        labels = {"status": status}
        return REGISTRY.get_sample_value("ingestor_webhook_latency_seconds_count", labels) or 0.0

    ok, bad = seen("200"), seen("400")
    await post(http, server, V1_BODY, signed(V1_BODY))
    await post(http, server, V1_BODY, {})
    assert (seen("200"), seen("400")) == (ok + 1, bad + 1)


# --- logs -------------------------------------------------------------------------------------


async def test_logs_never_show_secret_signature_or_body(
    server: WebhookServer,
    http: aiohttp.ClientSession,
    intake: FakeIntake,
    log_out: io.StringIO,
) -> None:
    """Across accepted, forged, stale, malformed and oversize deliveries, rendered logs (debug
    level) carry one reject line per refusal with reason and remote address, and never the
    secrets, a signature header, or any part of a body; the intake runs with the event id
    bound in the log context."""
    good = signed(V1_BODY)
    await post(http, server, V1_BODY, good)
    forged = signed(V1_BODY, "whsec_attackerGuess")
    await post(http, server, V1_BODY, forged)
    stale = signed(V1_BODY, at=int(time.time()) - 1000)
    await post(http, server, V1_BODY, stale)
    junk = b'{"object": "charge", "secretish": "ch_1PrivateJunk"}'
    await post(http, server, junk, signed(junk))
    big = b"x" * (MAX_BODY + 1)
    async with http.post(server.url, data=big, headers=signed(big)) as r:
        assert r.status == 413

    text = log_out.getvalue()
    lines = [orjson.loads(line) for line in text.splitlines()]
    rejected = [line for line in lines if line["event"] == "webhook delivery rejected"]
    assert [line["reason"] for line in rejected] == [
        "mismatch",
        "stale_timestamp",
        "unknown_object",
        "too_large",
    ]
    assert all(line["remote"] == "127.0.0.1" for line in rejected)
    for header in (good, forged, stale):
        signature = header["Stripe-Signature"]
        assert signature not in text
        assert signature.split("v1=")[1] not in text
    for needle in (SECRET, OLD_SECRET, "whsec_attackerGuess", "ch_1Private", "4242", "xxxxxxxx"):
        assert needle not in text
    assert intake.contexts[0]["event_id"] == "evt_1WebhookUnit"


# --- pure parsing and construction ------------------------------------------------------------


def test_parse_delivery_platform_event_has_no_account() -> None:
    """A v1 event without `account` and a v2 notification without `context` belong to the
    platform (account None)."""
    v1 = orjson.loads(V1_BODY)
    del v1["account"]
    assert parse_delivery(orjson.dumps(v1)).account is None
    v2 = orjson.loads(V2_BODY)
    del v2["context"]
    assert parse_delivery(orjson.dumps(v2)).account is None


async def test_server_refuses_reuse_after_close_and_bad_settings(intake: FakeIntake) -> None:
    """Closing twice is safe, starting after close is refused, no secret or a path without a
    leading slash is refused at construction, and repr never shows a secret."""
    srv = WebhookServer(
        intake,
        host="127.0.0.1",
        port=0,
        secrets=[SECRET],
        tolerance_seconds=300,
        max_body_bytes=MAX_BODY,
    )
    assert SECRET not in repr(srv)
    async with srv:
        assert srv.port > 0
    await srv.close()
    with pytest.raises(ClosedError):
        await srv.start()
    with pytest.raises(ValueError, match="at least one"):
        WebhookServer(intake, host="h", port=0, secrets=[], tolerance_seconds=300, max_body_bytes=1)
    with pytest.raises(ValueError, match="path"):
        WebhookServer(
            intake,
            host="h",
            port=0,
            path="hooks",
            secrets=[SECRET],
            tolerance_seconds=300,
            max_body_bytes=1,
        )


async def test_receive_is_the_same_path_without_sockets(intake: FakeIntake) -> None:
    """receive() on a server never started verifies and answers as HTTP does: a forged
    delivery is rejected with its reason and never reaches the intake, a signed one is
    committed; after close it is refused."""
    srv = WebhookServer(
        intake,
        host="127.0.0.1",
        port=0,
        secrets=[SECRET],
        tolerance_seconds=300,
        max_body_bytes=MAX_BODY,
    )
    forged = await srv.receive(V1_BODY, signed(V1_BODY, "whsec_attackerGuess")["Stripe-Signature"])
    assert forged == Answer(400, "mismatch", rejected=True)
    assert intake.deliveries == []
    good = await srv.receive(V2_BODY, signed(V2_BODY)["Stripe-Signature"])
    assert good == Answer(200, "committed", rejected=False)
    assert [d.id for d in intake.deliveries] == ["evt_test_65Thin"]
    await srv.close()
    with pytest.raises(ClosedError):
        await srv.receive(V2_BODY, signed(V2_BODY)["Stripe-Signature"])
