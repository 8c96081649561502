"""Listener: one aiohttp app on its own host and port, the shape of the service's HTTP servers."""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from ingestor.errors import ClosedError
from ingestor.resource import AsyncResource

log = structlog.get_logger(__name__)


class Listener(AsyncResource):
    """Serves the app a subclass builds (`_app`) on `host:port`; port 0 picks a free port
    (`.port`). Closing twice is safe; starting after close raises ClosedError."""

    kind = "http"  # names the server in its errors and its "listening" line

    def __init__(self, *, host: str, port: int) -> None:
        self._host = host
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._closed = False

    def _app(self) -> web.Application:
        raise NotImplementedError

    def _runner_options(self) -> dict[str, Any]:
        """Extra `web.AppRunner` options (none by default)."""
        return {}

    def _listening(self) -> dict[str, Any]:
        """Extra fields of the "listening" log line (none by default)."""
        return {}

    @property
    def port(self) -> int:
        if self._closed or self._port is None:
            raise ClosedError(f"{self.kind} server is not running")
        return self._port

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self._host in ("0.0.0.0", "") else self._host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        if self._closed:
            raise ClosedError(f"{self.kind} server is closed")
        if self._runner is not None:
            return
        runner = web.AppRunner(
            self._app(), access_log=None, handle_signals=False, **self._runner_options()
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._requested_port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        log.info(
            f"{self.kind} server listening", host=self._host, port=self._port, **self._listening()
        )

    async def close(self) -> None:
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


__all__ = ["Listener"]
