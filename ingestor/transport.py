"""The Stripe client's HTTP seam: one exchange in, (status, headers, body) out; aiohttp default."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Protocol

import aiohttp
import yarl

from ingestor.errors import ClosedError, TransportConnectionError, TransportTruncated
from ingestor.resource import AsyncResource

# Sized for ~100 requests in flight (Stripe's live limit is 100 req/s), kept alive between polls.
CONNECTION_LIMIT = 100
KEEPALIVE_SECONDS = 30.0


class HttpResponse(NamedTuple):
    """A complete answer: status, headers (looked up case-insensitively) and the whole body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class Transport(Protocol):
    """Carries one HTTP exchange for the Stripe client.

    `url` is absolute and already percent-encoded; `data`, when given, is sent as a form body.
    The exchange must finish within `total_seconds` and never go `stall_seconds`
    without progress. Failures below HTTP raise `TransportConnectionError` (no usable answer) or
    `TransportTruncated` (headers arrived, the body ended short); any HTTP status, error statuses
    included, is an answer and returns normally.
    """

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        data: Mapping[str, str] | None,
        *,
        total_seconds: float,
        stall_seconds: float,
    ) -> HttpResponse: ...

    async def close(self) -> None: ...


class AiohttpTransport(AsyncResource):
    """The real network: one aiohttp session (a pooled, keep-alive connector), made lazily on
    the first request so that it belongs to the loop that uses it."""

    def __init__(
        self,
        *,
        connection_limit: int = CONNECTION_LIMIT,
        keepalive_seconds: float = KEEPALIVE_SECONDS,
    ) -> None:
        self._limit = connection_limit
        self._keepalive = keepalive_seconds
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float, float], aiohttp.ClientTimeout] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Closes the session; safe to call more than once."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ClosedError("the HTTP transport is closed")
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._limit,
                limit_per_host=self._limit,
                keepalive_timeout=self._keepalive,
            )
            self._session = aiohttp.ClientSession(connector=connector, raise_for_status=False)
        return self._session

    def _timeout(self, total: float, stall: float) -> aiohttp.ClientTimeout:
        key = (total, stall)
        timeout = self._timeouts.get(key)
        if timeout is None:
            # sock_read bounds each read: a response that stops sending is dead even when the
            # total timeout is far off.
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(
                total=total, sock_read=min(stall, total)
            )
        return timeout

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        data: Mapping[str, str] | None,
        *,
        total_seconds: float,
        stall_seconds: float,
    ) -> HttpResponse:
        session = self._open()
        status: int | None = None
        got: Mapping[str, str] | None = None
        try:
            async with session.request(
                method,
                yarl.URL(url, encoded=True),
                headers=dict(headers),
                data=dict(data) if data else None,
                timeout=self._timeout(total_seconds, stall_seconds),
            ) as resp:
                status, got = resp.status, resp.headers
                body = await resp.read()
        except aiohttp.ClientPayloadError as exc:
            raise TransportTruncated(type(exc).__name__, status=status, headers=got) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            what = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            raise TransportConnectionError(what, status=status, headers=got) from exc
        return HttpResponse(status, got, body)

    def __repr__(self) -> str:
        return f"AiohttpTransport({'closed' if self._closed else 'open'})"


__all__ = ["AiohttpTransport", "HttpResponse", "Transport"]
