"""AsyncResource: the one shape of every resource here: `async with`, and close twice is safe."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class AsyncResource:
    """Base of the service's resources (client, sink, servers).

    `async with` calls `start()` then, however the block ends, `close()`. Subclasses make
    `close()` idempotent and refuse use after close with `ClosedError`.
    """

    async def start(self) -> None:
        """Acquires what the resource needs up front (nothing by default: lazy resources)."""

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
