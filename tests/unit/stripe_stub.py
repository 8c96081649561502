"""A scripted local HTTP server that answers like Stripe (or fails like a bad network) for tests."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import orjson
from aiohttp import web

Action = Literal["reply", "reset", "truncate", "stall"]


@dataclass
class Reply:
    """One scripted answer. `action` other than reply breaks the exchange instead."""

    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    action: Action = "reply"
    content_type: str = "application/json"


@dataclass(frozen=True)
class Seen:
    """A request as the server received it."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes


Script = Reply | Callable[[Seen], Reply]


def error(status: int, message: str = "", **fields: Any) -> Reply:
    """A Stripe-style error answer: `{"error": {...}}`."""
    err = {"message": message, **fields} if message else dict(fields)
    return Reply(status=status, json={"error": err})


class StripeStub:
    """Serves scripted replies in order (then `fallback`), recording every request.

    Listens on 127.0.0.1 on a free port; `base` is the api_base to give the client.
    """

    def __init__(self, fallback: Script | None = None) -> None:
        self.script: deque[Script] = deque()
        self.fallback = fallback
        self.requests: list[Seen] = []
        self._ids = itertools.count(1)
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def push(self, *replies: Script) -> None:
        self.script.extend(replies)

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(
            method=request.method,
            path=request.path,
            query=list(request.query.items()),
            headers=dict(request.headers),
            body=await request.read(),
        )
        self.requests.append(seen)
        item = self.script.popleft() if self.script else self.fallback
        if item is None:
            raise AssertionError(f"stub has no reply scripted for {seen.method} {seen.path}")
        reply = item if isinstance(item, Reply) else item(seen)
        headers = {"Request-Id": f"req_{next(self._ids)}", **reply.headers}
        raw = reply.body if reply.body is not None else orjson.dumps(reply.json)
        transport = request.transport
        if reply.action == "reset":
            assert transport is not None
            transport.abort()
            return web.Response(status=500)
        if reply.action == "stall":
            await self._release.wait()
            return web.Response(status=500)
        if reply.action == "truncate":
            # Promise the whole body, send half, then drop the connection.
            resp = web.StreamResponse(status=reply.status, headers=headers)
            resp.content_type = reply.content_type
            resp.content_length = len(raw)
            await resp.prepare(request)
            await resp.write(raw[: len(raw) // 2])
            assert transport is not None
            transport.abort()
            return resp
        return web.Response(
            status=reply.status, body=raw, headers=headers, content_type=reply.content_type
        )
