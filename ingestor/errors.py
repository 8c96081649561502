"""One exception root for the whole service; `retriable` says whether trying again can help."""

from __future__ import annotations

from collections.abc import Mapping


class IngestorError(Exception):
    """Root of every error the service raises on purpose.

    Foreign exceptions (aiohttp, aiokafka, orjson) are converted at the boundary
    with ``raise ... from exc`` so callers only ever catch this tree.
    """

    retriable: bool = False

    def __init__(self, message: str = "", *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id

    def __str__(self) -> str:
        if self.request_id:
            return f"{self.message} (request {self.request_id})"
        return self.message


class ConfigError(IngestorError):
    """Bad configuration; the CLI exits with code 2 before anything starts."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"config: {setting}: {problem}")
        self.setting = setting
        self.problem = problem


class ClosedError(IngestorError):
    """A resource was used after it was closed."""


class IncompatibleDependency(IngestorError):
    """An installed library is not the version whose internals this code was written against."""


# --- Stripe API -------------------------------------------------------------------------------


class StripeError(IngestorError):
    """Stripe answered with an error, or did not answer usably.

    `should_retry` is Stripe's `Stripe-Should-Retry` header (None when absent): when set it
    overrides `retriable` for the request that got it. `retry_after` is `Retry-After` in
    seconds, a floor for the next backoff.
    """

    def __init__(
        self,
        message: str = "",
        *,
        status: int | None = None,
        request_id: str | None = None,
        error_type: str | None = None,
        code: str | None = None,
        should_retry: bool | None = None,
        retry_after: float | None = None,
        limiter: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.status = status
        self.error_type = error_type
        self.code = code
        self.should_retry = should_retry
        self.retry_after = retry_after
        # A 429's `Stripe-Rate-Limited-Reason`: which of Stripe's limiters refused it.
        self.limiter = limiter


class StripeConnectionError(StripeError):
    """Connection refused/reset, timeout or stall before a full response arrived."""

    retriable = True


class StripeServerError(StripeError):
    """HTTP >= 500 or 409 (Stripe asks callers to retry these)."""

    retriable = True


class StripeRateLimited(StripeError):
    """HTTP 429: over a rate or concurrency limit; back off and slow down the limiter that
    `limiter` (Stripe-Rate-Limited-Reason) names."""

    retriable = True


class StripeLockTimeout(StripeError):
    """HTTP 429 with code `lock_timeout`: another request held the object's lock. A conflict,
    not a rate limit: retried with backoff, no limiter slows down."""

    retriable = True


class MalformedResponse(StripeError):
    """A body that is not the JSON Stripe promises (HTML error page, truncated JSON)."""

    retriable = True


class StripeAuthError(StripeError):
    """HTTP 401/403: the key is wrong or lacks permission. Retrying cannot help."""


class StripeNotFound(StripeError):
    """HTTP 404: the object does not exist (any more)."""


class StripeInvalidRequest(StripeError):
    """HTTP 400 and other 4xx: the request itself is wrong."""


class CursorExpired(StripeInvalidRequest):
    """A stored cursor or window start is older than Stripe's 30-day retention."""


class TransportError(IngestorError):
    """One HTTP exchange failed below HTTP (a transport's report to the Stripe client, which
    turns it into a StripeError). `status` and `headers` are set when a status line arrived."""

    retriable = True

    def __init__(
        self,
        message: str = "",
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, request_id=None if headers is None else headers.get("Request-Id"))
        self.status = status
        self.headers = headers


class TransportConnectionError(TransportError):
    """No usable response: refused, reset, timed out or stalled before the body was complete
    in a way that is not a short body."""


class TransportTruncated(TransportError):
    """The response's headers arrived, then its body ended short of what they announced."""


# --- Kafka ------------------------------------------------------------------------------------


class KafkaUnavailable(IngestorError):
    """The broker cannot be reached or a transaction could not be completed."""

    retriable = True


class Fenced(IngestorError):
    """Another process took over this shard's transactional id; this one must stop."""


class StatePartitionMismatch(IngestorError):
    """The state topic's partition count is not kafka.shards; retrying cannot help."""


class StateCorrupt(IngestorError):
    """A state record could not be decoded; refusing to guess a cursor."""


# --- routing, contracts, reading back ---------------------------------------------------------


class TopicCollision(IngestorError):
    """Two event types would land in topics Kafka treats as the same; refusing to merge them."""


class ContractViolation(IngestorError):
    """A record that does not match the published contract."""


class TailIncomplete(IngestorError):
    """`ingestor tail`: the time limit passed before every partition was read to its end."""


# --- webhook deliveries -----------------------------------------------------------------------


class WebhookRejected(IngestorError):
    """A webhook delivery refused before it reached the pipeline. `reason` is a short code for
    metrics and logs; messages never carry the signing secret, the signature or the body."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


class WebhookSignatureError(WebhookRejected):
    """The `Stripe-Signature` header is missing, malformed, does not match any secret, or its
    timestamp is outside the tolerance. Stripe's retry carries the same signature: not
    retriable."""


class WebhookPayloadError(WebhookRejected):
    """A correctly signed body that is not a Stripe event this receiver understands."""
