"""Webhook intake: which deliveries to publish, which are duplicates, which Stripe must retry."""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import Iterable
from typing import Literal, Protocol

import structlog

from ingestor import clock, metrics
from ingestor.config import Config
from ingestor.errors import IngestorError
from ingestor.events import Stream
from ingestor.state import BackfillProgress
from ingestor.webhook import Ack, Delivery

log = structlog.get_logger(__name__)

Verdict = Literal["seen", "before_start", "backfilled", "backfill_pending", "settled", "new"]
"""What the stream's state says of a delivered event, before anything is published:

- `seen`: in the seen window (published, or queued to be: answer once that commits);
- `before_start`: created before the tail start and outside any backfill: this process never
  ingests it (history before it started), so Stripe should stop retrying;
- `backfilled` / `backfill_pending`: the running backfill owns it, and has / has not passed it;
- `settled`: created before the prune horizon: every read that could return it is over, so
  polling has published it already (the invariant: an event visible within the sweep window
  is published by the sweep); this is what drops Stripe's retry three days later;
- `new`: nobody has published it yet, and a later poll or sweep may still read it.
"""

DUPLICATE_VERDICTS: frozenset[Verdict] = frozenset(
    {"seen", "before_start", "backfilled", "settled"}
)


def classify(
    created_ms: int,
    *,
    seen: bool,
    tail_start_ms: int,
    horizon_ms: int,
    backfill: BackfillProgress | None,
) -> Verdict:
    """Decides a delivery from bounded state only: the seen window, the tail start, the
    prune horizon and the backfill cursor (pure)."""
    if seen:
        return "seen"
    if created_ms < tail_start_ms:
        if backfill is None or created_ms < backfill.start_ms:
            return "before_start"
        if backfill.complete or created_ms < backfill.cursor_ms:
            return "backfilled"
        return "backfill_pending"
    if created_ms < horizon_ms:
        return "settled"
    return "new"


def type_wanted(event_type: str, types: Iterable[str]) -> bool:
    """Whether `stripe.types` (empty = every type; `*` wildcards as Stripe allows) takes it."""
    patterns = list(types)
    return not patterns or any(fnmatch.fnmatchcase(event_type, p) for p in patterns)


class Generation(Protocol):
    """The running pipeline generation, as the intake uses it."""

    async def push(self, delivery: Delivery) -> tuple[Ack, str]: ...


class WebhookIntake:
    """The receiver's `Intake`: routes each delivery to the generation running now.

    Lives as long as the receiver, across pipeline generations: while none runs (Kafka down,
    restoring state, restarting after a failed transaction) or once the service is stopping,
    every delivery is answered UNAVAILABLE (503) and Stripe retries it. A delivery that does
    not get its answer within `webhook.ack_timeout_seconds` is UNAVAILABLE too; its event may
    still commit, and Stripe's retry then finds it in the seen window.
    """

    def __init__(self, config: Config, streams: Iterable[Stream], stop: asyncio.Event) -> None:
        self._cfg = config
        self._streams = set(streams)
        self._stop = stop
        self._timeout = config.webhook.ack_timeout_seconds
        self.generation: Generation | None = None

    def add_streams(self, streams: Iterable[Stream]) -> None:
        """Takes deliveries of these streams too (connected accounts found while running)."""
        self._streams.update(streams)

    async def __call__(self, delivery: Delivery) -> Ack:
        started = clock.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                ack, reason = await self._decide(delivery)
        except TimeoutError:
            ack, reason = Ack.UNAVAILABLE, "timeout"
        seconds = clock.monotonic() - started
        metrics.WEBHOOK_DECISIONS.labels(outcome=ack.value, reason=reason).inc()
        (log.info if ack is Ack.UNAVAILABLE else log.debug)(
            "webhook delivery answered",
            event_id=delivery.id,
            api=delivery.api,
            outcome=ack.value,
            reason=reason,
            ms=round(seconds * 1000, 1),
        )
        return ack

    async def _decide(self, delivery: Delivery) -> tuple[Ack, str]:
        if Stream(delivery.api, delivery.account) not in self._streams:
            return Ack.IGNORED, "stream"
        if not type_wanted(delivery.type, self._cfg.stripe.types):
            return Ack.IGNORED, "type"
        generation = self.generation
        if self._stop.is_set():
            return Ack.UNAVAILABLE, "stopping"
        if generation is None:
            return Ack.UNAVAILABLE, "kafka"
        try:
            return await generation.push(delivery)
        except IngestorError as exc:
            # Answered 503, never dropped: Stripe retries, and polling reads it meanwhile.
            log.error("webhook delivery failed", event_id=delivery.id, error=str(exc))
            return Ack.UNAVAILABLE, "error"


__all__ = ["DUPLICATE_VERDICTS", "Generation", "Verdict", "WebhookIntake", "classify"]
