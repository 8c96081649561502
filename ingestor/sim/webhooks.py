"""Webhook deliverer: the simulator pushes each newly visible event, signed, to destinations."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ingestor.clock import wall
from ingestor.errors import ClosedError
from ingestor.resource import AsyncResource
from ingestor.sim.scenario import Destination
from ingestor.sim.simulator import Simulator

# One HTTP attempt: (destination, body, headers) -> status code; raises OSError/TimeoutError
# (or aiohttp.ClientError) when no status arrived. A seam: in-process simulations answer
# without sockets.
Sender = Callable[[Destination, bytes, Mapping[str, str]], Awaitable[int]]


def signature_header(body: bytes, secret: str, timestamp: int) -> str:
    """`t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`: the simulator's own signer (it shares
    no code with the ingestor's verifier, so each checks the other)."""
    mac = hmac.new(
        secret.encode("utf-8"), str(timestamp).encode("ascii") + b"." + body, hashlib.sha256
    )
    return f"t={timestamp},v1={mac.hexdigest()}"


@dataclass(slots=True)
class DestinationStats:
    """What one destination has seen: attempts, answers by status, events acknowledged."""

    attempts: int = 0
    acked: int = 0
    failed: int = 0
    retries: int = 0
    gave_up: int = 0
    duplicates: int = 0
    delayed: int = 0
    in_flight: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    acked_ids: set[str] = field(default_factory=set)
    given_up_ids: set[str] = field(default_factory=set)

    def as_json(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "acked": self.acked,
            "acked_events": len(self.acked_ids),
            "failed": self.failed,
            "retries": self.retries,
            "gave_up": self.gave_up,
            "duplicates": self.duplicates,
            "delayed": self.delayed,
            "in_flight": self.in_flight,
            "statuses": dict(self.statuses),
        }


class WebhookDeliverer(AsyncResource):
    """Watches the simulator for events becoming visible and delivers each to every destination
    of its kind, in its own task: an initial seeded delay (reorder, late), then attempts with
    exponential backoff until a 2xx or `max_attempts`. Events visible before a destination was
    added are not sent (Stripe sends only what happens after the destination exists).

    Randomness comes from one rng seeded from the simulator's seed, drawn in visibility order,
    so a seed fixes which events are duplicated, reordered or delayed.
    """

    def __init__(
        self,
        sim: Simulator,
        destinations: tuple[Destination, ...] = (),
        *,
        poll_interval_seconds: float = 0.05,
        send: Sender | None = None,
        seed: int | None = None,
    ) -> None:
        self._sim = sim
        self._poll = poll_interval_seconds
        self._send_override = send
        self._rng = random.Random((sim.seed if seed is None else seed) ^ 0x0E_B400C5)
        self.destinations: list[Destination] = []
        self.stats: list[DestinationStats] = []
        self._cursors: list[int] = []
        self._slots: list[asyncio.Semaphore] = []
        self._session: aiohttp.ClientSession | None = None
        self._group: asyncio.TaskGroup | None = None
        self._main: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._closed = False
        for destination in destinations:
            self.add(destination)

    def add(self, destination: Destination) -> int:
        """Adds a destination; it gets the events that become visible from now on."""
        self.destinations.append(destination)
        self.stats.append(DestinationStats())
        self._cursors.append(len(self._sim.events.visible_order))
        self._slots.append(asyncio.Semaphore(destination.concurrency))
        return len(self.destinations) - 1

    def counters(self) -> list[dict[str, Any]]:
        return [
            {"url": d.url, "kind": d.kind, **s.as_json()}
            for d, s in zip(self.destinations, self.stats, strict=True)
        ]

    def pending(self) -> int:
        """Deliveries scheduled or in flight, plus visible events not yet picked up."""
        waiting = sum(s.in_flight for s in self.stats)
        order = len(self._sim.events.visible_order)
        return waiting + sum(order - c for c in self._cursors)

    async def idle(self) -> None:
        """Returns once every visible event was delivered or given up (bound it with
        asyncio.timeout)."""
        while True:
            self._sim.tick()
            if self.pending() == 0:
                return
            await asyncio.sleep(self._poll)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._closed:
            raise ClosedError("webhook deliverer is closed")
        if self._main is not None:
            return
        if self._send_override is None:
            self._session = aiohttp.ClientSession()
        self._main = asyncio.create_task(self._run(), name="sim-webhooks")
        await self._started.wait()

    async def close(self) -> None:
        self._closed = True
        main, self._main = self._main, None
        if main is not None:
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await main
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            self._started.set()
            while True:
                self._sim.tick()
                self._dispatch(group)
                await asyncio.sleep(self._poll)

    # --- deliveries ---------------------------------------------------------------------------

    def _dispatch(self, group: asyncio.TaskGroup) -> None:
        order = self._sim.events.visible_order
        views = self._sim.views
        for ix, destination in enumerate(self.destinations):
            want = "v1" if destination.kind == "snapshot" else "v2"
            stats = self.stats[ix]
            for pos in range(self._cursors[ix], len(order)):
                serial = order[pos]
                if views.api_of(serial) != want:
                    continue
                # Stripe's snapshot body is the event JSON the list serves; a thin body is
                # the list's v2.core.event notification (no `data`).
                body = views.v1_event(serial) if want == "v1" else views.v2_event(serial)
                event_id = views.event_id(serial)
                delay = self._initial_delay(destination, stats)
                self._spawn(group, ix, event_id, body, delay)
                if self._rng.random() < destination.duplicate_share:
                    stats.duplicates += 1
                    again = self._rng.uniform(0, destination.duplicate_window_seconds)
                    self._spawn(group, ix, event_id, body, delay + again)
            self._cursors[ix] = len(order)

    def _initial_delay(self, destination: Destination, stats: DestinationStats) -> float:
        draw = self._rng.random()
        if draw < destination.late_share:
            stats.delayed += 1
            return self._rng.uniform(destination.late_min_seconds, destination.late_max_seconds)
        if draw < destination.late_share + destination.reorder_share:
            stats.delayed += 1
            return self._rng.uniform(0, destination.reorder_window_seconds)
        return 0.0

    def _spawn(
        self, group: asyncio.TaskGroup, ix: int, event_id: str, body: bytes, delay: float
    ) -> None:
        self.stats[ix].in_flight += 1
        # Jitter drawn now, in dispatch order, so the seed alone fixes every backoff.
        destination = self.destinations[ix]
        jitter = [self._rng.uniform(0.5, 1.0) for _ in range(destination.max_attempts)]
        group.create_task(self._deliver(ix, event_id, body, delay, jitter))

    async def _deliver(
        self, ix: int, event_id: str, body: bytes, delay: float, jitter: list[float]
    ) -> None:
        destination, stats = self.destinations[ix], self.stats[ix]
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            for attempt in range(destination.max_attempts):
                if attempt:
                    stats.retries += 1
                    backoff = destination.backoff_initial_seconds * 2 ** (attempt - 1)
                    backoff = min(backoff, destination.backoff_max_seconds)
                    await asyncio.sleep(backoff * jitter[attempt])
                async with self._slots[ix]:
                    outcome = await self._attempt(destination, body)
                stats.attempts += 1
                stats.statuses[outcome] = stats.statuses.get(outcome, 0) + 1
                if outcome.startswith("2"):
                    stats.acked += 1
                    stats.acked_ids.add(event_id)
                    return
                stats.failed += 1
            stats.gave_up += 1
            stats.given_up_ids.add(event_id)
        finally:
            stats.in_flight -= 1

    async def _attempt(self, destination: Destination, body: bytes) -> str:
        """One signed POST; the outcome is the status code, or `timeout` / `connection`."""
        # Signed at each attempt with the time of sending, as Stripe does on retries.
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": signature_header(body, destination.secret, int(wall())),
            "User-Agent": "Stripe/1.0 (ingestor simulator)",
        }
        try:
            async with asyncio.timeout(destination.timeout_seconds):
                status = await self._send(destination, body, headers)
        except TimeoutError:
            return "timeout"
        except (OSError, aiohttp.ClientError):
            return "connection"
        return str(status)

    async def _send(self, destination: Destination, body: bytes, headers: Mapping[str, str]) -> int:
        if self._send_override is not None:
            return await self._send_override(destination, body, headers)
        assert self._session is not None
        async with self._session.post(destination.url, data=body, headers=headers) as response:
            await response.read()
            return response.status


__all__ = ["DestinationStats", "Sender", "WebhookDeliverer", "signature_header"]
