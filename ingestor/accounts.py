"""Connected accounts: discovery with `GET /v1/accounts`, rescans, and where a new stream starts.

Planning is pure (`plan_scan`, `connection_start`); `AccountDirectory` does the I/O (paged
listing, a rescan schedule, an immediate rescan on `account.application.*` events) and tells
its subscribers what changed. Whoever runs streams (the pipeline, or one pipeline per shard)
subscribes and turns each change into `add_streams` / `park_streams` for the streams it owns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from ingestor import clock, metrics
from ingestor.errors import IngestorError
from ingestor.events import Api, Event, Stream
from ingestor.limits import Priority
from ingestor.plan import retention_edge
from ingestor.stripe_api import StripeClient

log = structlog.get_logger(__name__)

AUTHORIZED = "account.application.authorized"
DEAUTHORIZED = "account.application.deauthorized"
CONNECT_EVENTS = frozenset({AUTHORIZED, DEAUTHORIZED, "v1." + AUTHORIZED, "v1." + DEAUTHORIZED})
# A start this far inside Stripe's 30-day retention: the catch-up that reads from it must
# finish before the start itself ages out (which would be reported as a lost window).
START_MARGIN_MS = 3600 * 1000
GONE = "no longer listed by GET /v1/accounts (access revoked or account removed)"
# A deauthorization older than a listing that shows the account by more than this was
# undone (access given back) before that listing; the margin is for the listing's lag.
LISTING_SETTLE_MS = 60 * 1000


@dataclass(frozen=True, slots=True)
class Listed:
    """One connected account as `GET /v1/accounts` lists it."""

    id: str
    created_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Joined:
    """An account to read, and where its streams start unless the state topic has them.

    `start_ms` is its connection time (None: unknown, or an account listed again after it
    left, whose streams exist). `initial` marks the process's first scan, where the
    connection time applies only if the service ran before (the state topic has other
    streams); on a first run the pipeline starts them as configured accounts (now, or
    `backfill.since` with `--backfill`)."""

    account: str
    start_ms: int | None
    initial: bool = False


@dataclass(frozen=True, slots=True)
class Left:
    """An account to park (not drop): deauthorized, or gone from the listing."""

    account: str
    reason: str


@dataclass(frozen=True, slots=True)
class Change:
    """What one scan or one event changed."""

    joined: tuple[Joined, ...] = ()
    left: tuple[Left, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.joined or self.left)


def connection_start(
    authorized_ms: int | None, created_ms: int | None, now_ms: int, granularity_ms: int = 1000
) -> int:
    """Where a stream of an account connected mid-run starts: when it was connected (the
    `created` of its `account.application.authorized` event if seen, else the account's own
    `created`), never older than what Stripe still lists (30 days, less a margin), never in
    the future; rounded down to the stream's unit of `created`."""
    at = authorized_ms if authorized_ms is not None else created_ms
    floor = retention_edge(now_ms) + START_MARGIN_MS
    start = now_ms if at is None else min(max(at, floor), now_ms)
    return start - start % granularity_ms


def plan_scan(
    known: Mapping[str, bool],
    listed: Sequence[Listed],
    *,
    first: bool,
    authorized_ms: Mapping[str, int],
    now_ms: int,
) -> Change:
    """Compares a listing with the accounts known so far (id -> listed last time).

    New ids join from their connection time (`initial` on the process's first scan); ids
    that had left and are listed again join with no start (their streams exist: they are
    retried now). Known ids missing from the listing leave with a reason, once."""
    ids = {a.id for a in listed}
    joined = tuple(
        Joined(a.id, connection_start(authorized_ms.get(a.id), a.created_ms, now_ms), first)
        if a.id not in known
        else Joined(a.id, None)
        for a in listed
        if known.get(a.id) is not True
    )
    left = tuple(Left(a, GONE) for a, present in known.items() if present and a not in ids)
    return Change(joined, left)


class StreamOwner(Protocol):
    """What a discovery subscriber drives: a pipeline (one per shard when sharded)."""

    def add_streams(
        self, streams: Sequence[Stream], start_ms: int | None, *, initial: bool = False
    ) -> None: ...

    def park_streams(self, streams: Sequence[Stream], reason: str) -> None: ...


def streams_of(account: str | None, apis: Iterable[Api]) -> list[Stream]:
    return [Stream(api, account) for api in apis]


def feed(
    owner: StreamOwner,
    apis: Sequence[Api],
    owns: Callable[[str | None], bool] = lambda _account: True,
) -> Callable[[Change], None]:
    """A subscriber that applies changes to `owner` for the accounts `owns` accepts (a
    shard's share, say): pass it to `AccountDirectory.subscribe`."""

    def apply(change: Change) -> None:
        for j in change.joined:
            if owns(j.account):
                owner.add_streams(streams_of(j.account, apis), j.start_ms, initial=j.initial)
        for gone in change.left:
            if owns(gone.account):
                owner.park_streams(streams_of(gone.account, apis), gone.reason)

    return apply


@dataclass(slots=True)
class _Account:
    listed: bool
    start_ms: int | None
    initial: bool
    listed_ms: int = 0  # when a scan last listed it


@dataclass(slots=True)
class AccountDirectory:
    """The platform's connected accounts, kept current: scanned at start, rescanned every
    `rescan_seconds` and at once after an `account.application.(de)authorized` event.

    Subscribers get every `Change` (joins and leaves) as it is found; `joined()` replays the
    accounts known so far with their starts, for a subscriber that comes later (a new
    Kafka generation, or a shard that was just assigned)."""

    client: StripeClient
    rescan_seconds: float = 300.0
    _accounts: dict[str, _Account] = field(default_factory=dict)
    _authorized_ms: dict[str, int] = field(default_factory=dict)
    _subscribers: list[Callable[[Change], None]] = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    scans: int = 0

    # --- queries ----------------------------------------------------------------------------

    def accounts(self) -> list[str]:
        """Every account found so far, listed or parked, in discovery order."""
        return list(self._accounts)

    def joined(self) -> Change:
        """Every account known so far as joins (with their starts), and those gone as leaves."""
        return Change(
            tuple(Joined(a, s.start_ms, s.initial) for a, s in self._accounts.items()),
            tuple(Left(a, GONE) for a, s in self._accounts.items() if not s.listed),
        )

    def subscribe(self, callback: Callable[[Change], None]) -> Callable[[], None]:
        """Calls `callback` with each change from now on; returns the unsubscribe."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    # --- events from the platform's stream --------------------------------------------------

    def observe(self, events: Iterable[Event]) -> None:
        """Looks at events a stream read: an authorization is remembered (its `created` is the
        account's connection time) and a deauthorization parks the account now (unless a scan
        listed it well after the event: access was given back since); either makes
        the next rescan happen at once."""
        for e in events:
            if e.type not in CONNECT_EVENTS:
                continue
            account = e.account or _payload_account(e)
            if account is None:
                continue
            if e.type.endswith(AUTHORIZED):
                prev = self._authorized_ms.get(account)
                self._authorized_ms[account] = max(prev or 0, e.created_ms)
                log.info("connected account authorized", account=account)
            else:
                self._deauthorized(account, e.created_ms)
            self._wake.set()

    def nudge(self) -> None:
        """Rescan at once."""
        self._wake.set()

    def _deauthorized(self, account: str, created_ms: int) -> None:
        known = self._accounts.get(account)
        auth = self._authorized_ms.get(account)
        if auth is not None and auth >= created_ms:
            # Authorized again since, or in the same second (v1's `created` is in seconds,
            # and the page lists the newer first): seed 827 parked an account revoked and
            # restored within one second. If the revocation was the later one after all, its
            # next read answers 403 and parks the stream then.
            return
        if known is None or not known.listed:
            return
        if known.listed_ms - created_ms > LISTING_SETTLE_MS:
            # Listed again since (a catch-up reads old events after the process's scans):
            # access was given back, so the stream goes on.
            return
        known.listed = False
        self._publish(Change(left=(Left(account, f"{DEAUTHORIZED} at {created_ms // 1000}"),)))

    # --- scanning ---------------------------------------------------------------------------

    async def scan(self) -> Change:
        """Lists every connected account (paged) and publishes what changed."""
        listed = await list_accounts(self.client)
        first = self.scans == 0
        self.scans += 1
        now = clock.wall_ms()
        known = {a: s.listed for a, s in self._accounts.items()}
        change = plan_scan(
            known, listed, first=first, authorized_ms=self._authorized_ms, now_ms=now
        )
        for j in change.joined:
            if j.account in self._accounts:
                self._accounts[j.account].listed = True
            else:
                self._accounts[j.account] = _Account(True, j.start_ms, j.initial)
        for gone in change.left:
            self._accounts[gone.account].listed = False
        for a in listed:
            self._accounts[a.id].listed_ms = now
        metrics.CONNECTED_ACCOUNTS.set(len(listed))
        if change.joined and not first:
            log.info("connected accounts found", accounts=[j.account for j in change.joined][:20])
        for gone in change.left:
            log.info("connected account left", account=gone.account, reason=gone.reason)
        self._publish(change)
        return change

    async def run(self) -> None:
        """Rescans on schedule and when woken, until cancelled; a failed scan is retried
        at the next occasion (the streams already known go on meanwhile)."""
        while True:
            try:
                async with asyncio.timeout(self.rescan_seconds):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.scan()
            except IngestorError as exc:
                log.warning("connected account rescan failed", error=str(exc))

    def _publish(self, change: Change) -> None:
        if not change:
            return
        for callback in list(self._subscribers):
            callback(change)


def _payload_account(e: Event) -> str | None:
    value = e.payload.get("account") if e.payload else None
    return value if isinstance(value, str) else None


async def list_accounts(client: StripeClient) -> list[Listed]:
    """Every connected account, following `GET /v1/accounts` pages (Stripe's order)."""
    out: list[Listed] = []
    cursor: str | None = None
    while True:
        params = [("limit", "100")] + ([("starting_after", cursor)] if cursor else [])
        body = await client.request_json(
            "GET", "/v1/accounts", params=params, priority=Priority.SWEEP
        )
        data = body.get("data") or []
        for a in data:
            created = a.get("created")
            out.append(Listed(str(a["id"]), int(created) * 1000 if created else None))
        if not body.get("has_more") or not data:
            return out
        cursor = str(data[-1]["id"])


__all__ = [
    "AUTHORIZED",
    "DEAUTHORIZED",
    "GONE",
    "LISTING_SETTLE_MS",
    "AccountDirectory",
    "Change",
    "Joined",
    "Left",
    "Listed",
    "StreamOwner",
    "connection_start",
    "feed",
    "list_accounts",
    "plan_scan",
    "streams_of",
]
