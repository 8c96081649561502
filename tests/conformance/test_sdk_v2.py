"""The official stripe SDK drives the simulator's v2 thin events and related-object reads."""

from __future__ import annotations

import pytest
import stripe

from ingestor.events import rfc3339_to_ms
from tests.conformance.conftest import RunningSim


def test_v2_list_pages_through_every_thin_event(
    client: stripe.StripeClient, running_sim: RunningSim
) -> None:
    """SDK auto-paging over next_page_url yields each platform thin event once, newest first."""
    events = list(client.v2.core.events.list({"limit": 25}).auto_paging_iter())
    ids = [e.id for e in events]
    truth = [r for r in running_sim.sim.truth() if r["api"] == "v2" and r["account"] is None]
    assert len(ids) == len(set(ids)) == len(truth) >= 100
    assert set(ids) == {r["id"] for r in truth}
    stamps = [
        rfc3339_to_ms(e.created.isoformat())
        if not isinstance(e.created, str)
        else rfc3339_to_ms(e.created)
        for e in events
    ]
    assert stamps == sorted(stamps, reverse=True)


def test_v2_filters_by_types_and_created(client: stripe.StripeClient) -> None:
    """`types` and `created[gte|lt]` (RFC 3339) filter the thin event list."""
    everything = list(client.v2.core.events.list({"limit": 100}).auto_paging_iter())
    typed = list(
        client.v2.core.events.list(
            {"types": ["v1.charge.succeeded", "v2.core.account.updated"], "limit": 10}
        ).auto_paging_iter()
    )
    assert {e.type for e in typed} == {"v1.charge.succeeded", "v2.core.account.updated"}
    assert len(typed) == sum(
        e.type in ("v1.charge.succeeded", "v2.core.account.updated") for e in everything
    )
    raw = client.raw_request("get", "/v2/core/events", limit=100)
    body = client.deserialize(raw, api_mode="V2")
    first, last = body["data"][10]["created"], body["data"][40]["created"]
    window = list(
        client.v2.core.events.list(
            {"created": {"gte": last, "lt": first}, "limit": 7}
        ).auto_paging_iter()
    )
    assert [e.id for e in window] == [e["id"] for e in body["data"][11:41]]


def test_v2_retrieve_adds_data_and_related_objects_resolve(client: stripe.StripeClient) -> None:
    """Retrieve returns the event with `data`; every related_object.url resolves to an object
    with that id (or a 404 resource_missing for a deleted one)."""
    thin = client.v2.core.events.list({"limit": 100}).data
    full = client.v2.core.events.retrieve(thin[0].id)
    assert full.id == thin[0].id
    assert "data" in full
    resolved = 0
    missing: list[tuple[int | None, str | None]] = []
    for ev in thin:
        ref = getattr(ev, "related_object", None)
        if ref is None:
            continue
        try:
            raw = client.raw_request("get", ref.url)
        except stripe.InvalidRequestError as exc:
            missing.append((exc.http_status, exc.code))
            continue
        obj = client.deserialize(raw, api_mode="V2" if ref.url.startswith("/v2") else "V1")
        assert obj["id"] == ref.id
        resolved += 1
    assert resolved >= len(thin) * 0.9
    assert all(m == (404, "resource_missing") for m in missing)


def test_v2_account_typed_retrieve_with_context(
    client: stripe.StripeClient, running_sim: RunningSim
) -> None:
    """Stripe-Context selects a connected account's v2 stream; events carry `context`, and
    their related objects are readable only with that context."""
    acct = "acct_1SimConnectAlpha01"
    events = list(
        client.v2.core.events.list({"limit": 50}, {"stripe_context": acct}).auto_paging_iter()
    )
    assert events
    assert all(e.context == acct for e in events)
    ref = next(r for e in events if (r := getattr(e, "related_object", None)) is not None)
    raw = client.raw_request("get", ref.url, stripe_context=acct)
    assert client.deserialize(raw, api_mode="V1")["id"] == ref.id
    with pytest.raises(stripe.InvalidRequestError):
        client.raw_request("get", ref.url)  # the platform does not own it


def test_v2_bad_params(client: stripe.StripeClient) -> None:
    """Malformed created filters, >20 types and a forged page token are 400s."""
    for params in (
        {"created": {"gt": "not-a-time"}},
        {"types": [f"v1.x{i}" for i in range(21)]},
        {"limit": 1000},
    ):
        with pytest.raises(stripe.InvalidRequestError):
            client.v2.core.events.list(params)  # type: ignore[arg-type]  # deliberately invalid
    with pytest.raises(stripe.InvalidRequestError):
        client.raw_request("get", "/v2/core/events?page=%21%21garbage")
