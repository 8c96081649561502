"""Webhook receiver: signed Stripe deliveries in, on their own listener, answered after intake."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import orjson
import structlog
from aiohttp import HttpVersion11, web

from ingestor.clock import Clock, monotonic
from ingestor.errors import (
    ClosedError,
    IngestorError,
    MalformedResponse,
    WebhookPayloadError,
    WebhookRejected,
    WebhookSignatureError,
)
from ingestor.events import Event, rfc3339_to_ms
from ingestor.listener import Listener
from ingestor.metrics import WEBHOOK_DELIVERIES, WEBHOOK_LATENCY, WEBHOOK_REJECTS
from ingestor.signature import SignatureVerifier

log = structlog.get_logger("ingestor.webhook")

SIGNATURE_HEADER = "Stripe-Signature"
DEFAULT_PATH = "/webhooks/stripe"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One verified delivery: a v1 snapshot event, or a v2 thin-event notification."""

    api: Literal["v1", "v2"]
    id: str
    type: str
    created_ms: int
    account: str | None  # v1: event["account"]; v2: notification["context"]
    event: Event | None  # v1: Event.from_v1_raw(body), Stripe's exact bytes; v2: None
    notification: dict[str, Any] | None  # v2: the parsed thin notification; v1: None


class Ack(enum.Enum):
    """What the intake made of a delivery; decides the HTTP answer Stripe sees."""

    COMMITTED = "committed"  # 200
    DUPLICATE = "duplicate"  # 200: committed before (by either path)
    UNAVAILABLE = "unavailable"  # 503, so Stripe retries
    IGNORED = "ignored"  # 200: a stream this process does not ingest


Intake = Callable[[Delivery], Awaitable[Ack]]


@dataclass(frozen=True, slots=True)
class Answer:
    """What the receiver answered: HTTP status, and the outcome or the reject reason."""

    status: int
    outcome: str
    rejected: bool


_ACK_STATUS = {Ack.COMMITTED: 200, Ack.DUPLICATE: 200, Ack.IGNORED: 200, Ack.UNAVAILABLE: 503}

# Rejections that are not signature failures: (reason, HTTP status).
TOO_LARGE = "too_large"
READ_TIMEOUT = "read_timeout"
MALFORMED_JSON = "malformed_json"
MALFORMED_EVENT = "malformed_event"
UNKNOWN_OBJECT = "unknown_object"
METHOD = "method"
_REJECT_STATUS = {TOO_LARGE: 413, READ_TIMEOUT: 408, METHOD: 405}


# --- parsing ----------------------------------------------------------------------------------


class _Kind(msgspec.Struct):
    """The one field that tells a snapshot event from a thin notification; the rest skipped."""

    object: str | None = None


_KIND = msgspec.json.Decoder(_Kind)


def parse_delivery(body: bytes) -> Delivery:
    """A verified body -> Delivery; WebhookPayloadError when it is no event this understands."""
    try:
        kind = _KIND.decode(body).object
    except msgspec.DecodeError:  # ValidationError (not an object, `object` not a string) too
        raise WebhookPayloadError(MALFORMED_JSON, "body is not a JSON object") from None
    if kind == "event":
        try:
            event = Event.from_v1_raw(body)
        except MalformedResponse:
            raise WebhookPayloadError(MALFORMED_EVENT, "not a v1 event") from None
        return Delivery("v1", event.id, event.type, event.created_ms, event.account, event, None)
    if kind == "v2.core.event":
        return _parse_notification(body)
    raise WebhookPayloadError(UNKNOWN_OBJECT, "neither an event nor a v2.core.event")


def _parse_notification(body: bytes) -> Delivery:
    try:
        note = orjson.loads(body)
        event_id, event_type = note["id"], note["type"]
        context = note.get("context")
        if not (isinstance(event_id, str) and event_id and isinstance(event_type, str)):
            raise ValueError("id and type must be non-empty strings")
        if not event_type or not (context is None or isinstance(context, str)):
            raise ValueError("bad type or context")
        created_ms = rfc3339_to_ms(note["created"])
    except orjson.JSONDecodeError:
        raise WebhookPayloadError(MALFORMED_JSON, "body is not JSON") from None
    except (KeyError, TypeError, ValueError, AttributeError):
        raise WebhookPayloadError(MALFORMED_EVENT, "not a v2 thin-event notification") from None
    return Delivery("v2", event_id, event_type, created_ms, context or None, None, note)


# --- server -----------------------------------------------------------------------------------


class WebhookServer(Listener):
    """aiohttp listener for `POST <path>`, separate from the ops listener (no /metrics here).

    Order per request: bound the body (413 on a Content-Length over `max_body_bytes` before a
    byte of it is read, or as soon as a chunked body passes it), read it within
    `read_timeout_seconds` (408 for a client that drips it; headers that are not complete
    within it get the connection closed), verify the signature over the
    raw bytes (400), parse (400), then await the intake for at most `ack_timeout_seconds`
    (503 past it, so Stripe retries) and map its Ack to the status. Nothing reaches the
    intake before the signature has been verified. Port 0 picks a free port (`.port`).
    """

    kind = "webhook"

    def __init__(
        self,
        intake: Intake,
        *,
        host: str,
        port: int,
        path: str = DEFAULT_PATH,
        secrets: Sequence[str],
        tolerance_seconds: float,
        max_body_bytes: int,
        read_timeout_seconds: float = 10.0,
        ack_timeout_seconds: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        if not path.startswith("/"):
            raise ValueError(f"webhook path must start with '/': {path!r}")
        if max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")
        super().__init__(host=host, port=port)
        self._intake = intake
        self.path = path
        self._verifier = SignatureVerifier(
            secrets, tolerance_seconds=tolerance_seconds, clock_=clock
        )
        self._max_body = max_body_bytes
        self._read_timeout = read_timeout_seconds
        self._ack_timeout = ack_timeout_seconds

    def __repr__(self) -> str:
        return f"WebhookServer(path={self.path!r}, verifier={self._verifier!r})"

    @property
    def url(self) -> str:
        return self.base_url + self.path

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=self._max_body)
        app.router.add_route("*", self.path, self._handle, expect_handler=self._expect)
        return app

    def _runner_options(self) -> dict[str, Any]:
        return {
            # The signature covers the bytes as sent; inflating a gzip body first would verify
            # something else and invite decompression bombs.
            "auto_decompress": False,
            # aiohttp closes a connection whose request headers are not complete within the
            # keep-alive timeout (dribbled bytes do not extend it): this bounds slow headers
            # as `read_timeout_seconds` bounds slow bodies. Idle keep-alive gets as long.
            "keepalive_timeout": self._read_timeout,
        }

    def _listening(self) -> dict[str, Any]:
        return {"path": self.path}

    # --- one request --------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started = monotonic()
        response = await self._answer(request)
        WEBHOOK_LATENCY.labels(status=str(response.status)).observe(monotonic() - started)
        return response

    async def _expect(self, request: web.Request) -> web.Response | None:
        """`Expect: 100-continue` is answered only for a request that may be read: a wrong
        method or an announced body over the limit is refused before the client sends it."""
        try:
            if request.method != "POST":
                raise WebhookRejected(METHOD, "only POST is served")
            length = request.content_length
            if length is not None and length > self._max_body:
                raise WebhookRejected(TOO_LARGE, f"Content-Length {length} over {self._max_body}")
        except WebhookRejected as exc:
            response = self._response({"error": exc.reason}, self._reject(exc, request.remote))
            # The client was told nothing yet: it may still send the body, which is not read.
            response.force_close()
            return response
        if request.version < HttpVersion11:
            return None  # HTTP/1.0 has no interim responses; the body simply follows
        if request.headers.get("Expect", "").lower() != "100-continue":
            return self._response({"error": "expectation_failed"}, 417)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # What follows is the real response; the interim one is not part of its size.
        request.writer.output_size = 0
        return None

    async def _answer(self, request: web.Request) -> web.Response:
        try:
            if request.method != "POST":
                raise WebhookRejected(METHOD, "only POST is served")
            body = await self._read_body(request)
        except WebhookRejected as exc:
            return self._response({"error": exc.reason}, self._reject(exc, request.remote))
        answer = await self.receive(
            body, request.headers.get(SIGNATURE_HEADER), remote=request.remote
        )
        if answer.rejected:
            return self._response({"error": answer.outcome}, answer.status)
        return self._response(
            {"received": answer.status == 200, "outcome": answer.outcome}, answer.status
        )

    async def receive(
        self, body: bytes, signature: str | None, *, remote: str | None = None
    ) -> Answer:
        """One delivery whose body was read: verify, parse, hand to the intake; the answer
        holds the HTTP status and the outcome (an Ack value, `timeout`, `error`) or, when
        rejected, the reason.

        The socket-free seam: a simulation's deliverer can call it directly (no server
        started) and sees exactly what an HTTP client would, metrics and logs included.
        """
        if self._closed:
            raise ClosedError("webhook server is closed")
        try:
            self._verifier.verify(body, signature)
            delivery = parse_delivery(body)
        except WebhookRejected as exc:
            return Answer(self._reject(exc, remote), exc.reason, rejected=True)
        with structlog.contextvars.bound_contextvars(event_id=delivery.id):
            status, outcome = await self._deliver(delivery)
            WEBHOOK_DELIVERIES.labels(api=delivery.api, outcome=outcome).inc()
            log.debug("webhook delivery", api=delivery.api, outcome=outcome, status=status)
        return Answer(status, outcome, rejected=False)

    async def _read_body(self, request: web.Request) -> bytes:
        length = request.content_length
        if length is not None and length > self._max_body:
            raise WebhookRejected(TOO_LARGE, f"Content-Length {length} over {self._max_body}")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._read_timeout):
                while chunk := await request.content.readany():
                    size += len(chunk)
                    if size > self._max_body:
                        raise WebhookRejected(TOO_LARGE, f"body over {self._max_body} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise WebhookRejected(
                READ_TIMEOUT, f"body not complete after {self._read_timeout:g}s"
            ) from None
        return b"".join(chunks)

    async def _deliver(self, delivery: Delivery) -> tuple[int, str]:
        try:
            async with asyncio.timeout(self._ack_timeout):
                ack = await self._intake(delivery)
        except TimeoutError:
            log.warning("webhook intake timed out", timeout_seconds=self._ack_timeout)
            return 503, "timeout"
        except IngestorError as exc:
            log.warning("webhook intake failed", error=type(exc).__name__, retriable=exc.retriable)
            return (503 if exc.retriable else 500), "error"
        except Exception as exc:
            log.exception("webhook intake crashed", error=type(exc).__name__)
            return 500, "error"
        return _ACK_STATUS[ack], ack.value

    def _reject(self, exc: WebhookRejected, remote: str | None) -> int:
        """Counts and logs one refusal (reason and remote address only); returns its status."""
        status = _REJECT_STATUS.get(exc.reason, 400)
        WEBHOOK_REJECTS.labels(reason=exc.reason).inc()
        log.warning(
            "webhook delivery rejected",
            reason=exc.reason,
            status=status,
            remote=remote,
            kind="signature" if isinstance(exc, WebhookSignatureError) else "request",
        )
        return status

    @staticmethod
    def _response(body: dict[str, Any], status: int) -> web.Response:
        response = web.json_response(body, status=status)
        if status == 405:
            response.headers["Allow"] = "POST"
        if status in (408, 413):
            # Do not linger reading the rest of a body that is too big or too slow.
            response.force_close()
        return response


__all__ = ["Ack", "Answer", "Delivery", "Intake", "WebhookServer", "parse_delivery"]
