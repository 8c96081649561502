"""Stripe API client: auth, versions, Stripe's limiters, retries with backoff, error mapping; the
HTTP exchange itself goes through a `Transport` (aiohttp by default, in-process in simulation)."""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import urlencode, urlsplit

import orjson
import structlog

from ingestor import __version__
from ingestor.config import StripeConfig
from ingestor.errors import (
    ClosedError,
    ConfigError,
    CursorExpired,
    MalformedResponse,
    StripeAuthError,
    StripeConnectionError,
    StripeError,
    StripeInvalidRequest,
    StripeLockTimeout,
    StripeNotFound,
    StripeRateLimited,
    StripeServerError,
    TransportError,
    TransportTruncated,
)
from ingestor.limits import Limits, Priority
from ingestor.metrics import API_REQUESTS, RATE_LIMITED
from ingestor.ratelimit import RateBudget, Sleep
from ingestor.resource import AsyncResource
from ingestor.retry import Failure, RetryPolicy
from ingestor.transport import AiohttpTransport, HttpResponse, Transport

log = structlog.get_logger(__name__)

T = TypeVar("T")
Api = Literal["v1", "v2"]

USER_AGENT = f"ingestor/{__version__} (stripe-kafka events ingestor)"
# A response that stops sending for this long is dead even if the total timeout is far off.
DEFAULT_STALL_SECONDS = 10.0
MAX_MESSAGE = 300

# A path segment is an id if it looks like Stripe's `prefix_...` with a digit, or is long.
_ID_SEGMENT = re.compile(r"^(?:[A-Za-z]+_[A-Za-z0-9_]*\d[A-Za-z0-9_]*|[A-Za-z0-9_\-.]{25,})$")
_RETENTION_HINTS = ("30 days", "retention", "too old", "older than", "no longer available")
_CURSOR_PARAMS = frozenset({"starting_after", "ending_before", "created", "page"})


@dataclass(frozen=True, slots=True)
class Response(Generic[T]):
    """A successful answer: the (parsed) JSON body and Stripe's `Request-Id`."""

    body: T
    request_id: str | None
    status: int


def endpoint_template(path: str) -> str:
    """`/v1/charges/ch_123?x=1` -> `/v1/charges/{id}`: bounded metric label cardinality."""
    path = path.split("?", 1)[0]
    parts = ["{id}" if _ID_SEGMENT.match(p) else p for p in path.split("/")]
    return "/".join(parts) or "/"


def _identity(body: dict[str, Any]) -> dict[str, Any]:
    return body


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # the HTTP-date form; Stripe does not send it, backoff covers it
    return seconds if seconds >= 0 else None


class _Failure(Exception):
    """One failed attempt: the error to raise (carrying Stripe's retry hints, if any)."""

    def __init__(self, error: StripeError) -> None:
        super().__init__(error.message)
        self.error = error


class StripeClient(AsyncResource):
    """One client of Stripe (over one transport), shared by every stream of the process.

    `request` is the one door: it builds the URL (never leaving `api_base`'s origin),
    sets auth/version/account headers, waits its turn under Stripe's limiters (`limits`:
    global, per operation, Files, concurrency; by priority), and retries retriable
    failures under `ingestor.retry` (full-jitter exponential backoff, `Stripe-Should-Retry`
    obeyed, `Retry-After` as a floor). A 2xx body goes through `parse` inside each attempt,
    so a garbage 200 is retried like a truncated body.

    `transport` carries each exchange; without one the client makes (and closes) its own
    `AiohttpTransport`. A transport passed in belongs to the caller, who closes it.
    `limits` defaults to the config's (`Limits.from_config`); `budget`, when given, is the
    global rate bucket inside them.
    """

    def __init__(
        self,
        config: StripeConfig,
        *,
        transport: Transport | None = None,
        budget: RateBudget | None = None,
        limits: Limits | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        stall_timeout: float | None = None,
    ) -> None:
        base = urlsplit(config.api_base.rstrip("/"))
        if base.scheme not in ("http", "https") or not base.hostname:
            raise ConfigError(
                "stripe.api_base", f"expected an http(s) URL, got {config.api_base!r}"
            )
        if config.live and base.scheme != "https":
            raise ConfigError("stripe.api_base", "a live key is only ever sent over https")
        self._config = config
        self._base = config.api_base.rstrip("/")
        # How `_url` writes api_base back: lower-case scheme, netloc and path as given.
        self._base_origin = f"{base.scheme.lower()}://{base.netloc}"
        self._base_path = base.path
        self._origin = (base.scheme, base.hostname, base.port or _default_port(base.scheme))
        self._limits = limits if limits is not None else Limits.from_config(config, budget=budget)
        self._policy = RetryPolicy(
            "stripe request",
            attempts=config.max_retries + 1,
            base=config.backoff_base,
            cap=config.backoff_max,
            api=True,
            sleep=sleep,
            rng=rng,
        )
        self._policies: dict[int, RetryPolicy] = {}
        stall = stall_timeout if stall_timeout is not None else DEFAULT_STALL_SECONDS
        self._request_timeout = config.request_timeout
        self._stall_timeout = min(stall, config.request_timeout)
        self._owns_transport = transport is None
        self._transport: Transport = transport if transport is not None else AiohttpTransport()
        self._closed = False

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def api_version(self) -> str:
        return self._config.api_version

    @property
    def budget(self) -> RateBudget:
        """The global rate bucket (sub-budgets for a class of traffic are its `share`s)."""
        return self._limits.global_budget

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def transport(self) -> Transport:
        return self._transport

    async def start(self) -> None:
        self._check_open()

    async def close(self) -> None:
        """Closes the transport it made itself; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._owns_transport:
            await self._transport.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("StripeClient is closed")

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"StripeClient({self._base!r}, version={self.api_version!r}, {state})"

    # --- requests -----------------------------------------------------------------------------

    async def request_json(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        account: str | None = None,
        api: Api = "v1",
        extra_budgets: Sequence[RateBudget] = (),
        priority: int = Priority.TAIL,
        max_retries: int | None = None,
        data: Mapping[str, str] | None = None,
    ) -> Any:
        """The JSON object Stripe answered with (see `request` for everything else)."""
        response = await self.request(
            method,
            path_or_url,
            params=params,
            account=account,
            api=api,
            extra_budgets=extra_budgets,
            priority=priority,
            max_retries=max_retries,
            data=data,
            parse=_identity,
        )
        return response.body

    async def request(
        self,
        method: str,
        path_or_url: str,
        *,
        parse: Callable[[dict[str, Any]], T] | None = None,
        parse_raw: Callable[[bytes], T] | None = None,
        params: Sequence[tuple[str, str]] = (),
        account: str | None = None,
        api: Api = "v1",
        extra_budgets: Sequence[RateBudget] = (),
        priority: int = Priority.TAIL,
        max_retries: int | None = None,
        data: Mapping[str, str] | None = None,
    ) -> Response[T]:
        """Sends one logical request, retrying per Stripe's rules; returns the parsed body.

        `path_or_url`: a path (`/v1/events`), a path with query (a v2 `next_page_url`) or an
        absolute URL under `api_base` (a `related_object.url`); any other origin is refused.
        `parse` turns the JSON object into T and raises MalformedResponse to get a retry;
        `parse_raw`, when given, gets the body's bytes instead (a faster decoder of its own).
        `extra_budgets` are caps acquired before Stripe's limiters (a sweep's share);
        `priority` (`ingestor.limits.Priority`) orders this request among those waiting.
        """
        self._check_open()
        url, path = self._url(path_or_url, params)
        endpoint = endpoint_template(path)
        headers = self._headers(method, account, api)
        limits = self._limits
        op = limits.operation(method, endpoint)
        policy = self._policy if max_retries is None else self._policy_for(max_retries)

        async def attempt() -> Response[T]:
            try:
                async with limits.admit(op, priority, extra_budgets):
                    if self._closed:
                        # Closed while backing off or queued: stop instead of a RuntimeError.
                        raise ClosedError("StripeClient is closed")
                    status, request_id, raw = await self._attempt(
                        method, url, headers, data, endpoint
                    )
                try:
                    if parse_raw is not None:
                        result = parse_raw(raw)
                    else:
                        assert parse is not None, "request() needs parse or parse_raw"
                        result = parse(self._decode(raw))
                except MalformedResponse as exc:
                    raise _Failure(
                        MalformedResponse(exc.message, status=status, request_id=request_id)
                    ) from exc
            except _Failure as failure:
                raise failure.error from failure.__cause__
            limits.on_success(op)
            return Response(result, request_id, status)

        def failed(failure: Failure) -> None:
            error = failure.cause
            if not isinstance(error, StripeError):
                return  # closed, or a bug in `parse`: final, and the caller's to report
            limiter = None
            if isinstance(error, StripeRateLimited):
                RATE_LIMITED.inc()
                limiter = limits.on_rate_limited(op, error.limiter)
            log.warning(
                "stripe request failed",
                endpoint=endpoint,
                method=method,
                account=account,
                status=error.status,
                limiter=limiter,
                request_id=error.request_id,
                attempt=failure.attempt,
                error=type(error).__name__,
                error_type=error.error_type,
                code=error.code,
                message=error.message,
                will_retry=failure.will_retry,
            )

        return await policy.call(attempt, on_failure=failed)

    def _policy_for(self, max_retries: int) -> RetryPolicy:
        # Kept per count: every hydration fetch asks for one, and building a policy per
        # request was a visible share of a simulation's CPU.
        policy = self._policies.get(max_retries)
        if policy is None:
            policy = self._policies[max_retries] = self._policy.with_attempts(
                max(0, max_retries) + 1
            )
        return policy

    async def _attempt(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        data: Mapping[str, str] | None,
        endpoint: str,
    ) -> tuple[int, str | None, bytes]:
        """One HTTP exchange; every failure comes out as a `_Failure` wrapping a StripeError."""
        try:
            response: HttpResponse = await self._transport.send(
                method,
                url,
                headers,
                data,
                total_seconds=self._request_timeout,
                stall_seconds=self._stall_timeout,
            )
        except TransportError as exc:
            API_REQUESTS.labels(endpoint=endpoint, status=str(exc.status or "error")).inc()
            error: StripeError
            if isinstance(exc, TransportTruncated):
                error = MalformedResponse(
                    f"truncated response body: {exc.message}",
                    status=exc.status,
                    request_id=exc.request_id,
                )
            else:  # TransportConnectionError: nothing usable arrived
                error = StripeConnectionError(
                    f"no usable response from Stripe: {exc.message}",
                    status=exc.status,
                    request_id=exc.request_id,
                )
            raise _Failure(error) from exc
        status, resp_headers, raw = response
        request_id = resp_headers.get("Request-Id")
        API_REQUESTS.labels(endpoint=endpoint, status=str(status)).inc()
        if 200 <= status < 300:
            return status, request_id, raw
        should_retry = resp_headers.get("Stripe-Should-Retry")
        retry_after = _retry_after(resp_headers.get("Retry-After"))
        header = None if should_retry is None else should_retry.strip().lower() == "true"
        raise _Failure(
            self._error(
                status,
                raw,
                request_id,
                should_retry=header,
                retry_after=retry_after,
                limiter=resp_headers.get("Stripe-Rate-Limited-Reason"),
            )
        )

    def _decode(self, raw: bytes) -> dict[str, Any]:
        """The JSON object a 2xx promises; MalformedResponse (retriable) for anything else."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            head = self._scrub(raw[:40].decode("utf-8", "replace"))
            raise MalformedResponse(
                f"response is not JSON ({len(raw)} bytes, starts {head!r})"
            ) from exc
        if not isinstance(body, dict):
            raise MalformedResponse(f"expected a JSON object, got {type(body).__name__}")
        return body

    def _error(
        self,
        status: int,
        raw: bytes,
        request_id: str | None,
        *,
        should_retry: bool | None = None,
        retry_after: float | None = None,
        limiter: str | None = None,
    ) -> StripeError:
        """Maps a non-2xx answer to the error family, quoting Stripe's type/code/message;
        the error carries the `Stripe-Should-Retry` and `Retry-After` hints for its callers,
        and a 429 the limiter that refused it (`Stripe-Rate-Limited-Reason`)."""
        err: dict[str, Any] = {}
        try:
            body = orjson.loads(raw)
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                err = body["error"]
        except orjson.JSONDecodeError:
            pass  # an HTML error page: the status alone decides
        etype = _opt_str(err.get("type"))
        code = _opt_str(err.get("code"))
        message = self._scrub(_opt_str(err.get("message")) or "")
        param = _opt_str(err.get("param"))
        detail = "/".join(x for x in (etype, code) if x)
        text = (
            f"HTTP {status}"
            + (f" {detail}" if detail else "")
            + (f": {message}" if message else "")
        )
        if param:
            text += f" (param {param})"
        text = text[:MAX_MESSAGE]
        cls: type[StripeError]
        if status == 429 and code == "lock_timeout":
            cls = StripeLockTimeout  # a lock conflict: retried, but no limiter slows down
        elif status == 429:
            cls = StripeRateLimited
        elif status == 409 or status >= 500:
            cls = StripeServerError
        elif status in (401, 403):
            cls = StripeAuthError
        elif status == 404:
            cls = StripeNotFound
        elif status == 400 and _is_cursor_expired(param, message):
            cls = CursorExpired
        else:
            cls = StripeInvalidRequest
        return cls(
            text,
            status=status,
            request_id=request_id,
            error_type=etype,
            code=code,
            should_retry=should_retry,
            retry_after=retry_after,
            limiter=limiter if status == 429 else None,
        )

    def _scrub(self, text: str) -> str:
        # Stripe masks keys in its messages, but a proxy or a test server might not.
        key = self._config.api_key.reveal()
        return text.replace(key, "[key]") if key else text

    def _url(self, path_or_url: str, params: Sequence[tuple[str, str]]) -> tuple[str, str]:
        """The absolute URL to call and its path; refuses anything off `api_base`'s origin."""
        # `//host/...` is a scheme-relative URL to another host, not a path.
        is_path = path_or_url.startswith("/") and not path_or_url.startswith("//")
        if (
            is_path
            and path_or_url.isascii()
            and path_or_url.isprintable()  # urlsplit drops tabs and newlines: not here
            and "?" not in path_or_url
            and "#" not in path_or_url
        ):
            # A bare path stays on api_base's origin by construction (checked once, in
            # __init__): what urlsplit would give, without splitting every request's URL.
            path = self._base_path + path_or_url
            text = self._base_origin + path
            return (f"{text}?{urlencode(list(params))}" if params else text), path
        full = self._base + path_or_url if is_path else path_or_url
        parts = urlsplit(full)
        scheme = parts.scheme.lower()
        try:
            port = parts.port or _default_port(scheme)
        except ValueError:
            port = -1
        if (scheme, parts.hostname, port) != self._origin:
            # Never let a URL from a response carry the key to another host.
            raise StripeInvalidRequest(
                f"refusing a URL outside the API origin: {scheme}://{parts.hostname}"
            )
        if scheme != "https" and self._config.live:
            raise StripeInvalidRequest("refusing to send a live key over plain http")
        query = parts.query
        if params:
            extra = urlencode(list(params))
            query = f"{query}&{extra}" if query else extra
        text = f"{scheme}://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")
        return text, parts.path

    def _headers(self, method: str, account: str | None, api: Api) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self._config.api_key.reveal()}",
            "Stripe-Version": self._config.api_version,
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        }
        if account:
            headers["Stripe-Context" if api == "v2" else "Stripe-Account"] = account
        if method.upper() == "POST":
            # One key for all attempts, so a retried POST cannot apply twice.
            headers["Idempotency-Key"] = str(uuid.uuid4())
        return headers


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _is_cursor_expired(param: str | None, message: str) -> bool:
    lowered = message.lower()
    hinted = any(h in lowered for h in _RETENTION_HINTS)
    if param is not None:
        return param.split("[", 1)[0] in _CURSOR_PARAMS and hinted
    return hinted and ("cursor" in lowered or "timestamp" in lowered or "event" in lowered)


__all__ = ["Response", "StripeClient", "endpoint_template"]
