"""InProcessTransport: the Stripe client's transport answered by the simulator's app, no sockets."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from typing import Any, Self
from urllib.parse import urlencode, urlsplit

import structlog
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import HttpVersion11, RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.typedefs import Handler
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ingestor.errors import ClosedError, TransportConnectionError, TransportTruncated
from ingestor.resource import AsyncResource
from ingestor.sim.server import build_app
from ingestor.sim.simulator import Simulator
from ingestor.transport import HttpResponse

log = structlog.get_logger(__name__)

# What aiohttp's server answers when a handler raises something that is not an HTTP error.
_INTERNAL_ERROR = "500 Internal Server Error\n\nServer got itself in trouble"


class _Connection:
    """Stands in for the request's socket transport; records how the server ended it, which is
    how the simulator's faults act ('reset' aborts, 'truncate' closes after a short body)."""

    def __init__(self) -> None:
        self.aborted = False
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # no socket, no peer: the fault code then skips SO_LINGER

    def is_closing(self) -> bool:
        return self.aborted or self.closed

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True


class _Protocol:
    """What a `web.Request` reads of its server protocol (no socket behind it)."""

    max_field_size = 8190
    max_line_length = 8190
    max_headers = 128
    ssl_context = None
    peername = None
    sockname = None

    def __init__(self, transport: _Connection, writer: _Wire) -> None:
        self.transport = transport
        self.writer = writer


def _request(
    method: str,
    target: str,
    headers: CIMultiDict[str],
    wire: _Wire,
    connection: _Connection,
    payload: StreamReader,
) -> web.Request:
    """The request the server would build from the wire, made directly: aiohttp's own
    `make_mocked_request` builds mocks that cost ~1 ms a request, most of a simulation's time."""
    frozen = CIMultiDictProxy(headers)
    raw = tuple((k.encode(), v.encode()) for k, v in frozen.items())
    message = RawRequestMessage(
        method.upper(), target, HttpVersion11, frozen, raw, False, None, False, False, URL(target)
    )
    loop = asyncio.get_running_loop()
    return web.Request(
        message,
        payload,
        _Protocol(connection, wire),  # type: ignore[arg-type]  # duck-typed: see _Protocol
        wire,
        asyncio.current_task(),  # type: ignore[arg-type]  # the task serving the request
        loop,
        client_max_size=1024**2,
    )


class _Wire(AbstractStreamWriter):
    """Collects what the server would have sent: headers once, then the body's bytes, until
    end of body or until the connection is ended under it."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self.headers_sent = False
        self.body = bytearray()
        self.complete = False

    @property
    def transport(self) -> Any:
        return self._connection

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if not self._connection.is_closing():
            self.body += chunk
            self.output_size += len(chunk)

    async def write_eof(self, chunk: bytes = b"") -> None:
        await self.write(chunk)
        if not self._connection.is_closing():
            self.complete = True

    async def drain(self) -> None:
        return None

    def enable_compression(self, encoding: str = "deflate", strategy: int | None = None) -> None:
        raise NotImplementedError("the in-process transport carries no compressed bodies")

    def enable_chunking(self) -> None:
        return None  # framing is the socket's business; the body is collected whole

    async def write_headers(self, status_line: str, headers: CIMultiDict[str]) -> None:
        if not self._connection.is_closing():
            self.headers_sent = True


class InProcessTransport(AsyncResource):
    """Answers the Stripe client from an aiohttp `web.Application` (the simulator's, built by
    `ingestor.sim.server.build_app`) inside the calling task: no sockets, so a simulation in
    fast-forwarded loop time runs the real client code against the simulator's model.

    Each request is routed and passed through the app's middlewares exactly as the server does,
    so the simulator's edge applies auth, its rate limit, latency (as loop-time sleeps) and
    injected faults. A 'reset' fault becomes `TransportConnectionError`, a 'truncate' fault
    `TransportTruncated` (headers, then a short body), a 'stall' the same timeout the network
    would give: the exchange is bounded by min(total, stall) seconds, because in-process the
    whole answer arrives at once, so a stall is a wait for the first byte.
    """

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._closed = False
        self._chains: dict[Handler, Handler] = {}

    @classmethod
    def for_simulator(cls, sim: Simulator) -> Self:
        """A transport onto a fresh app around `sim` (its own rate limiter, like a new server)."""
        return cls(build_app(sim))

    @property
    def app(self) -> web.Application:
        return self._app

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        self._closed = True

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
        if self._closed:
            raise ClosedError("the in-process transport is closed")
        # A running server's app is frozen: its middleware chain is fixed from then on.
        self._app.freeze()
        try:
            async with asyncio.timeout(min(total_seconds, stall_seconds)):
                return await self._exchange(method, url, headers, data)
        except TimeoutError as exc:
            raise TransportConnectionError("timed out") from exc

    async def _exchange(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        data: Mapping[str, str] | None,
    ) -> HttpResponse:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        sent = CIMultiDict(headers)
        sent.setdefault("Host", parts.netloc)
        payload: StreamReader = EMPTY_PAYLOAD
        if data:
            body = urlencode(list(data.items())).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
            sent["Content-Length"] = str(len(body))
            loop = asyncio.get_running_loop()
            payload = StreamReader(BaseProtocol(loop), 2**16, loop=loop)
            payload.feed_data(body)
            payload.feed_eof()
        connection = _Connection()
        wire = _Wire(connection)
        request = _request(method, target, sent, wire, connection, payload)
        match_info = await self._app.router.resolve(request)
        match_info.add_app(self._app)
        match_info.freeze()
        request._match_info = match_info  # what the server's handler does once it resolved
        try:
            response = await self._handler(match_info.handler)(request)
        except web.HTTPException as exc:
            response = exc  # aiohttp's server answers a raised HTTP error with itself
        except Exception:
            log.exception("sim handler failed", method=method, path=parts.path)
            response = web.Response(status=500, text=_INTERNAL_ERROR)
        if not connection.is_closing():
            await response.prepare(request)
            await response.write_eof()
        if connection.aborted or not wire.headers_sent:
            raise TransportConnectionError("connection reset by peer")
        answer = CIMultiDictProxy(CIMultiDict(response.headers))
        if not wire.complete:
            raise TransportTruncated(
                "body ended before its Content-Length", status=response.status, headers=answer
            )
        return HttpResponse(response.status, answer, bytes(wire.body))

    def _handler(self, handler: Handler) -> Handler:
        # The same onion the server builds: the first middleware is the outermost. Built
        # once per route handler (the app is frozen, so its middlewares are fixed).
        chain = self._chains.get(handler)
        if chain is None:
            chain = handler
            for middleware in reversed(self._app.middlewares):
                chain = functools.update_wrapper(
                    functools.partial(middleware, handler=chain), chain
                )
            self._chains[handler] = chain
        return chain

    def __repr__(self) -> str:
        return f"InProcessTransport({'closed' if self._closed else 'open'})"


__all__ = ["InProcessTransport"]
