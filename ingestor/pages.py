"""Pagination over /v1/events and /v2/core/events as async iterators of normalized pages."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from ingestor.errors import MalformedResponse
from ingestor.events import V1_LIST, Api, Event, ms_to_rfc3339
from ingestor.ratelimit import RateBudget
from ingestor.stripe_api import StripeClient

V1_EVENTS = "/v1/events"
V2_EVENTS = "/v2/core/events"


@dataclass(frozen=True)
class Page:
    """One list page, events in Stripe's order (newest first).

    `cursor` resumes the walk after this page: the v1 `starting_after` id or the v2
    `next_page_url`; None on the last page.
    """

    events: list[Event]
    has_more: bool
    request_id: str | None
    cursor: str | None = None


def _data(body: dict[str, Any]) -> list[Any]:
    data = body.get("data")
    if not isinstance(data, list):
        raise MalformedResponse(f"list response without a data array: {type(data).__name__}")
    return data


def _v1_parser(account: str | None) -> Callable[[bytes], Page]:
    def parse(raw: bytes) -> Page:
        try:
            body = V1_LIST.decode(raw)
        except msgspec.DecodeError as exc:
            raise MalformedResponse(f"malformed v1 list response: {exc}"[:200]) from exc
        # bytes(): each event keeps only its own bytes, not the whole page alive.
        events = [Event.from_v1_raw(bytes(item), account) for item in body.data]
        if body.has_more and not events:
            # Nothing to continue from: following it would loop on the same request forever.
            raise MalformedResponse("v1 list response with has_more but no data")
        cursor = events[-1].id if body.has_more else None
        return Page(events, body.has_more, None, cursor)

    return parse


def _v2_parser(account: str | None, api_version: str) -> Callable[[dict[str, Any]], Page]:
    def parse(body: dict[str, Any]) -> Page:
        events = [Event.from_v2(obj, account, api_version) for obj in _data(body)]
        if "next_page_url" not in body:
            raise MalformedResponse("v2 list response without next_page_url")
        next_url = body["next_page_url"]
        if next_url is not None and (not isinstance(next_url, str) or not next_url):
            raise MalformedResponse("v2 list response with a non-string next_page_url")
        return Page(events, next_url is not None, None, next_url)

    return parse


async def v1_pages(
    client: StripeClient,
    *,
    account: str | None,
    created_gte: int | None = None,
    created_lt: int | None = None,
    types: Sequence[str] = (),
    limit: int = 100,
    starting_after: str | None = None,
    extra_budgets: Sequence[RateBudget] = (),
) -> AsyncIterator[Page]:
    """Walks `GET /v1/events` newest -> oldest with `starting_after` until `has_more` is false.

    `created_gte`/`created_lt` are unix seconds; one type is sent as `type`, several as
    `types[]` (Stripe refuses both together).
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
    parse = _v1_parser(account)
    cursor = starting_after
    while True:
        params = [*base, ("starting_after", cursor)] if cursor else base
        response = await client.request(
            "GET",
            V1_EVENTS,
            params=params,
            account=account,
            api="v1",
            extra_budgets=extra_budgets,
            parse_raw=parse,
        )
        page = response.body
        yield Page(page.events, page.has_more, response.request_id, page.cursor)
        if page.cursor is None:
            return
        cursor = page.cursor


async def v2_pages(
    client: StripeClient,
    *,
    account: str | None,
    created_gte_ms: int | None = None,
    created_lt_ms: int | None = None,
    types: Sequence[str] = (),
    limit: int = 100,
    extra_budgets: Sequence[RateBudget] = (),
) -> AsyncIterator[Page]:
    """Walks `GET /v2/core/events`, following `next_page_url` until it is null.

    Bounds are unix milliseconds sent as RFC 3339; types go as `types=a&types=b`; the
    account goes in `Stripe-Context`.
    """
    params: list[tuple[str, str]] = [("limit", str(limit))]
    if created_gte_ms is not None:
        params.append(("created[gte]", ms_to_rfc3339(created_gte_ms)))
    if created_lt_ms is not None:
        params.append(("created[lt]", ms_to_rfc3339(created_lt_ms)))
    params.extend(("types", t) for t in types)
    parse = _v2_parser(account, client.api_version)
    url = V2_EVENTS
    while True:
        response = await client.request(
            "GET",
            url,
            params=params,
            account=account,
            api="v2",
            extra_budgets=extra_budgets,
            parse=parse,
        )
        page = response.body
        yield Page(page.events, page.has_more, response.request_id, page.cursor)
        if page.cursor is None:
            return
        if page.cursor == url:
            raise MalformedResponse(
                "v2 next_page_url points at the same page again", request_id=response.request_id
            )
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


__all__ = ["Page", "fetch_object", "v1_pages", "v2_pages"]
