"""Pagination over /v1/events and /v2/core/events as async iterators of normalized pages."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog

from ingestor import metrics
from ingestor.anchors import Chain
from ingestor.errors import MalformedResponse
from ingestor.events import V1_LIST, V1_PAGE_HEADS, Api, Event, Stream, ms_to_rfc3339
from ingestor.limits import Priority
from ingestor.ratelimit import RateBudget
from ingestor.stripe_api import StripeClient

log = structlog.get_logger(__name__)

V1_EVENTS = "/v1/events"
V1_LIMIT = 100  # events per v1 list page: Stripe's maximum, what every walk asks for
V2_EVENTS = "/v2/core/events"

_warned: set[tuple[str, str]] = set()
"""(stream key, anomaly kind) already logged: each warns once per process, then only counts."""


Skip = Callable[[str, int], bool]
"""skip(event id, created ms) is True for an event the reader already has: it is counted in
`Page.skipped` and never built."""


@dataclass(frozen=True)
class Page:
    """One list page, events in Stripe's order (newest first), only those inside the created
    range the walk asked for, less those the walk's `skip` said it already has.

    `cursor` resumes the walk after this page: the v1 `starting_after` id or the v2
    `next_page_url`; None on the last page. `skipped` counts the events left out by `skip`;
    `last_created_ms` is the created time of the page's last listed event (skipped or not).
    """

    events: list[Event]
    has_more: bool
    request_id: str | None
    cursor: str | None = None
    skipped: int = 0
    last_created_ms: int | None = None


def _data(body: dict[str, Any]) -> list[Any]:
    data = body.get("data")
    if not isinstance(data, list):
        raise MalformedResponse(f"list response without a data array: {type(data).__name__}")
    return data


def _v1_parser(
    account: str | None, skip: Skip | None, lo_ms: int | None, hi_ms: int | None
) -> Callable[[bytes], Page]:
    def parse(raw: bytes) -> Page:
        try:
            # Every event's head in one call: the per-event decode calls were a visible share
            # of a tail's CPU, which reads each event about ten times (overlaps and sweeps).
            page = V1_PAGE_HEADS.decode(raw)
        except msgspec.DecodeError as exc:  # ValidationError (a bad event) is a DecodeError
            raise MalformedResponse(f"malformed v1 list response: {exc}"[:200]) from exc
        heads = page.data
        if page.has_more and not heads:
            # Nothing to continue from: following it would loop on the same request forever.
            raise MalformedResponse("v1 list response with has_more but no data")
        items: list[msgspec.Raw] | None = None
        events: list[Event] = []
        skipped = 0
        for i, head in enumerate(heads):
            created_ms = head.created * 1000
            # Only an event inside the range is skipped: one outside it is built, so that
            # `_Range.keep` still counts it as an anomaly.
            if (
                skip is not None
                and head.id
                and head.type
                and (lo_ms is None or created_ms >= lo_ms)
                and (hi_ms is None or created_ms < hi_ms)
                and skip(head.id, created_ms)
            ):
                skipped += 1
                continue
            if items is None:
                # Split into each event's bytes only once one is built: a page of re-read
                # events (poll overlaps, sweeps) never needs them.
                try:
                    items = V1_LIST.decode(raw).data
                except msgspec.DecodeError as exc:
                    raise MalformedResponse(f"malformed v1 list response: {exc}"[:200]) from exc
            # bytes(): each event keeps only its own bytes, not the whole page alive.
            events.append(Event.from_v1_head(head, bytes(items[i]), account))
        cursor = heads[-1].id if page.has_more else None
        last = heads[-1].created * 1000 if heads else None
        return Page(events, page.has_more, None, cursor, skipped, last)

    return parse


def _v2_parser(account: str | None, api_version: str) -> Callable[[dict[str, Any]], Page]:
    def parse(body: dict[str, Any]) -> Page:
        events = [Event.from_v2(obj, account, api_version) for obj in _data(body)]
        if "next_page_url" not in body:
            raise MalformedResponse("v2 list response without next_page_url")
        next_url = body["next_page_url"]
        if next_url is not None and (not isinstance(next_url, str) or not next_url):
            raise MalformedResponse("v2 list response with a non-string next_page_url")
        last = events[-1].created_ms if events else None
        return Page(events, next_url is not None, None, next_url, 0, last)

    return parse


def _anomaly(stream: Stream, kind: str, n: int, message: str, **fields: Any) -> None:
    metrics.API_ANOMALIES.labels(stream=stream.key, kind=kind).inc(n)
    if (stream.key, kind) in _warned:
        return
    _warned.add((stream.key, kind))
    log.warning(
        message,
        stream=stream.key,
        kind=kind,
        **fields,
        more="later ones on this stream are only counted in ingestor_api_anomalies_total",
    )


def _export_zero(stream: Stream) -> None:
    # A counter child exists (at 0) once labelled: dashboards see the series before any anomaly.
    for kind in metrics.API_ANOMALY_KINDS:
        metrics.API_ANOMALIES.labels(stream=stream.key, kind=kind)


class _Range:
    """The created range one walk asked for, [lo_ms, hi_ms), and how its request wrote it."""

    def __init__(
        self,
        stream: Stream,
        lo_ms: int | None,
        hi_ms: int | None,
        show: Callable[[int], int | str],
        requested: tuple[int | str | None, int | str | None],
    ) -> None:
        self.stream = stream
        self.lo_ms = lo_ms
        self.hi_ms = hi_ms
        self._show = show
        self._requested = requested

    def keep(self, events: list[Event]) -> list[Event]:
        """The events inside the range; the others are counted and dropped.

        The reads of a stream partition time, so the read whose range covers an event's created
        time is the one that publishes it: one that gets it anyway (a server ignoring the
        filter) must not publish it too, or each read would publish it once more.
        """
        lo, hi = self.lo_ms, self.hi_ms
        kept: list[Event] = []
        outside: list[Event] = []
        for e in events:
            inside = (lo is None or e.created_ms >= lo) and (hi is None or e.created_ms < hi)
            (kept if inside else outside).append(e)
        if outside:
            _anomaly(
                self.stream,
                "out_of_range",
                len(outside),
                "event outside the requested range",
                event_id=outside[0].id,
                created=self._show(outside[0].created_ms),
                requested_gte=self._requested[0],
                requested_lt=self._requested[1],
                dropped=len(outside),
                action="dropped: the read whose range covers its created time publishes it",
            )
        return kept

    def below(self, page: Page) -> bool:
        """Whether the page ends before the range: a newest-first list only gets older after it,
        so a server that ignores the lower bound would otherwise walk the whole history."""
        last = page.last_created_ms
        return self.lo_ms is not None and last is not None and last < self.lo_ms

    def stuck(self, cursor: str) -> None:
        _anomaly(
            self.stream,
            "stuck_cursor",
            1,
            "page cursor does not advance; the walk ends here",
            cursor=cursor,
            requested_gte=self._requested[0],
            requested_lt=self._requested[1],
            action="the repeated page is dropped; events after it in this range are not read",
        )


async def v1_pages(
    client: StripeClient,
    *,
    account: str | None,
    created_gte: int | None = None,
    created_lt: int | None = None,
    types: Sequence[str] = (),
    limit: int = V1_LIMIT,
    starting_after: str | None = None,
    extra_budgets: Sequence[RateBudget] = (),
    priority: int = Priority.TAIL,
    skip: Skip | None = None,
) -> AsyncGenerator[Page, None]:
    """Walks `GET /v1/events` newest -> oldest with `starting_after` until `has_more` is false.

    `created_gte`/`created_lt` are unix seconds; one type is sent as `type`, several as
    `types[]` (Stripe refuses both together). Events outside [created_gte, created_lt) are
    dropped from the pages and counted as anomalies; the walk also ends at a page that ends
    before created_gte, and at a cursor it already followed (that page is a repeat, dropped).
    Every request waits under `extra_budgets` and Stripe's limiters at `priority`. An
    in-range event `skip` says the caller has is only counted (`Page.skipped`), not built.
    """
    base: list[tuple[str, str]] = [("limit", str(limit))]
    if created_gte is not None:
        base.append(("created[gte]", str(created_gte)))
    if created_lt is not None:
        base.append(("created[lt]", str(created_lt)))
    if len(types) == 1:
        base.append(("type", types[0]))
    else:
        base.extend(("types[]", t) for t in types)
    lo_ms = None if created_gte is None else created_gte * 1000
    hi_ms = None if created_lt is None else created_lt * 1000
    parse = _v1_parser(account, skip, lo_ms, hi_ms)
    bounds = _Range(
        Stream("v1", account),
        lo_ms,
        hi_ms,
        lambda ms: ms // 1000,
        (created_gte, created_lt),
    )
    _export_zero(bounds.stream)
    cursor = starting_after
    followed = {cursor} if cursor else set()
    while True:
        params = [*base, ("starting_after", cursor)] if cursor else base
        response = await client.request(
            "GET",
            V1_EVENTS,
            params=params,
            account=account,
            api="v1",
            extra_budgets=extra_budgets,
            priority=priority,
            parse_raw=parse,
        )
        page = response.body
        if page.cursor is not None and page.cursor in followed:
            bounds.stuck(page.cursor)
            return
        yield Page(
            bounds.keep(page.events),
            page.has_more,
            response.request_id,
            page.cursor,
            page.skipped,
            page.last_created_ms,
        )
        if page.cursor is None or bounds.below(page):
            return
        followed.add(page.cursor)
        cursor = page.cursor


@dataclass(frozen=True)
class Second:
    """One second listed by `v1_second`: its pages in list order (events not left out by
    `skip`, each once) and the ids of every event it holds, skipped or not, in list order."""

    pages: list[Page]
    ids: list[str]


async def v1_second(
    client: StripeClient,
    *,
    account: str | None,
    second: int,
    walks: Sequence[Chain],
    types: Sequence[str] = (),
    limit: int = V1_LIMIT,
    priority: int = Priority.TAIL,
    skip: Skip | None = None,
) -> Second:
    """Lists the events of one second (unix seconds) with `walks` run concurrently (see
    `anchors.chains`): each `v1_pages` from after its start id until a page holds its stop
    id. Pages come back in list order, walk after walk, each event once (a walk that reads
    past its stop repeats the next walk's first events; the first listing is kept). `skip`
    leaves events out unbuilt as in `v1_pages`; their ids are still listed."""

    async def walk(start: str | None, stop: str | None) -> tuple[list[Page], list[str]]:
        pages: list[Page] = []
        # Every in-range id the parser meets, in list order (built or skipped): a page parsed
        # again after a malformed body repeats its ids, which the listing below drops.
        met: list[str] = []

        def note(event_id: str, created_ms: int) -> bool:
            met.append(event_id)
            return skip is not None and skip(event_id, created_ms)

        async with contextlib.aclosing(
            v1_pages(
                client,
                account=account,
                created_gte=second,
                created_lt=second + 1,
                types=types,
                limit=limit,
                starting_after=start,
                priority=priority,
                skip=note,
            )
        ) as walking:
            mark = 0
            async for page in walking:
                pages.append(page)
                found = stop is not None and stop in met[mark:]
                mark = len(met)
                if found:
                    break
        return pages, met

    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(walk(start, stop)) for start, stop in walks]
    except BaseExceptionGroup as group:
        # Raised as one walk would raise it (the others were cancelled by it), so callers
        # tell retriable errors from permanent ones as they do for any walk.
        raise group.exceptions[0]  # noqa: B904 (a "from" would replace its own cause)
    built: set[str] = set()
    listed: set[str] = set()
    out = Second([], [])
    for task in tasks:
        pages, met = task.result()
        for page in pages:
            events = [e for e in page.events if e.id not in built]
            built.update(e.id for e in events)
            out.pages.append(dataclasses.replace(page, events=events))
        for event_id in met:
            if event_id not in listed:
                listed.add(event_id)
                out.ids.append(event_id)
    return out


async def v2_pages(
    client: StripeClient,
    *,
    account: str | None,
    created_gte_ms: int | None = None,
    created_lt_ms: int | None = None,
    types: Sequence[str] = (),
    limit: int = 100,
    extra_budgets: Sequence[RateBudget] = (),
    priority: int = Priority.TAIL,
) -> AsyncIterator[Page]:
    """Walks `GET /v2/core/events`, following `next_page_url` until it is null.

    Bounds are unix milliseconds sent as RFC 3339; types go as `types=a&types=b`; the
    account goes in `Stripe-Context`. Out-of-range events, a page ending before the range and
    a `next_page_url` already followed are handled as in `v1_pages`.
    """
    params: list[tuple[str, str]] = [("limit", str(limit))]
    if created_gte_ms is not None:
        params.append(("created[gte]", ms_to_rfc3339(created_gte_ms)))
    if created_lt_ms is not None:
        params.append(("created[lt]", ms_to_rfc3339(created_lt_ms)))
    params.extend(("types", t) for t in types)
    parse = _v2_parser(account, client.api_version)
    bounds = _Range(
        Stream("v2", account),
        created_gte_ms,
        created_lt_ms,
        ms_to_rfc3339,
        (
            None if created_gte_ms is None else ms_to_rfc3339(created_gte_ms),
            None if created_lt_ms is None else ms_to_rfc3339(created_lt_ms),
        ),
    )
    _export_zero(bounds.stream)
    url = V2_EVENTS
    followed = {url}
    while True:
        response = await client.request(
            "GET",
            url,
            params=params,
            account=account,
            api="v2",
            extra_budgets=extra_budgets,
            priority=priority,
            parse=parse,
        )
        page = response.body
        if page.cursor is not None and page.cursor in followed:
            bounds.stuck(page.cursor)
            return
        yield Page(
            bounds.keep(page.events),
            page.has_more,
            response.request_id,
            page.cursor,
            last_created_ms=page.last_created_ms,
        )
        if page.cursor is None or bounds.below(page):
            return
        followed.add(page.cursor)
        # The page URL already carries the filters; sending them again would duplicate them.
        url, params = page.cursor, []


async def fetch_object(
    client: StripeClient,
    url: str,
    *,
    account: str | None,
    api: Api,
    max_retries: int | None = None,
) -> dict[str, Any]:
    """GETs one object (a thin event's `related_object.url`); v2 URLs use `Stripe-Context`."""
    body: dict[str, Any] = await client.request_json(
        "GET", url, account=account, api=api, max_retries=max_retries
    )
    return body


__all__ = ["Page", "Skip", "fetch_object", "v1_pages", "v2_pages"]
