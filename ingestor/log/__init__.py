"""The transactional log seam: what the pipeline commits batches and state to (Kafka or memory)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from ingestor.events import Record


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one committed batch wrote: records on their own topics, and records the log diverted
    to the dead-letter topic (records the caller already addressed to the DLQ count as published).
    """

    published: int
    dlq: int


class TransactionalLog(Protocol):
    """A log with Kafka's transactional semantics, as the pipeline uses it.

    - `commit_batch(records, state)` makes the records and the state records (state topic,
      key -> value, None a tombstone) visible to read_committed readers together, or not at all.
      A record too large for the log is replaced by a dead-letter record (`BatchResult.dlq`).
    - After `commit_batch` raises `KafkaUnavailable`, the outcome is unknown (it may have
      committed): call `restore_state()` before trying again.
    - `restore_state()` reads the state topic read_committed: the latest value per key, a
      tombstone deleting the key. It also takes over the transactional id, fencing any older
      writer with the same id: that writer's next call raises `Fenced`, and it stays fenced.
    - `healthy` is True while the last interaction with the log succeeded (for /readyz).
    - It is an async context manager; closing twice is safe, use after close raises ClosedError.
    """

    @property
    def transactional_id(self) -> str | None: ...

    @property
    def healthy(self) -> bool: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def ensure_topics(self, names: Iterable[str]) -> None: ...

    async def restore_state(self) -> dict[bytes, bytes]: ...

    async def commit_batch(
        self, records: Sequence[Record], state: Mapping[bytes, bytes | None]
    ) -> BatchResult: ...


__all__ = ["BatchResult", "TransactionalLog"]
