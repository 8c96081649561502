"""The official stripe SDK drives the simulator's v1 API as an independent client."""

from __future__ import annotations

import io

import pytest
import stripe

from tests.conformance.conftest import RunningSim


def test_auto_paging_starting_after_walks_every_platform_event_once(
    client: stripe.StripeClient, running_sim: RunningSim
) -> None:
    """Auto-paging older (starting_after) yields each visible platform v1 event once, newest
    first, matching the simulator's ground truth."""
    page = client.v1.events.list({"limit": 100})
    seen = [e.id for e in page.auto_paging_iter()]
    truth = [r for r in running_sim.sim.truth() if r["api"] == "v1" and r["account"] is None]
    assert len(seen) == len(set(seen)) == len(truth) >= 1000
    assert set(seen) == {r["id"] for r in truth}
    created = [e.created for e in client.v1.events.list({"limit": 100}).data]
    assert created == sorted(created, reverse=True)


def test_auto_paging_ending_before_walks_towards_newer_events(
    client: stripe.StripeClient,
) -> None:
    """Auto-paging newer (ending_before) from an old event yields all newer events once, oldest
    first, as the SDK reverses each newest-first page."""
    newest_first = [e.id for e in client.v1.events.list({"limit": 100}).auto_paging_iter()]
    anchor = newest_first[500]
    walked = [
        e.id
        for e in client.v1.events.list({"limit": 37, "ending_before": anchor}).auto_paging_iter()
    ]
    assert walked == list(reversed(newest_first[:500]))


def test_created_and_type_filters(client: stripe.StripeClient) -> None:
    """`created[gte|lt]`, `type` with a wildcard and `types[]` restrict the list as Stripe's do."""
    all_events = list(client.v1.events.list({"limit": 100}).auto_paging_iter())
    mid = all_events[len(all_events) // 2].created
    window = list(
        client.v1.events.list(
            {"limit": 100, "created": {"gte": mid - 3600, "lt": mid}}
        ).auto_paging_iter()
    )
    expected = [e.id for e in all_events if mid - 3600 <= e.created < mid]
    assert [e.id for e in window] == expected
    assert expected
    charges = list(client.v1.events.list({"type": "charge.*", "limit": 100}).auto_paging_iter())
    assert charges
    assert all(e.type.startswith("charge.") for e in charges)
    assert len(charges) == sum(e.type.startswith("charge.") for e in all_events)
    two = list(
        client.v1.events.list(
            {"types": ["customer.created", "invoice.paid"], "limit": 100}
        ).auto_paging_iter()
    )
    assert {e.type for e in two} == {"customer.created", "invoice.paid"}
    assert len(two) == sum(e.type in ("customer.created", "invoice.paid") for e in all_events)


def test_retrieve_event_and_its_object(client: stripe.StripeClient) -> None:
    """An event retrieved by id equals its list entry; its object is readable at a newer or
    equal version."""
    listed = client.v1.events.list({"type": "charge.succeeded", "limit": 1}).data[0]
    got = client.v1.events.retrieve(listed.id)
    assert got.id == listed.id
    assert got.type == "charge.succeeded"
    assert got.object == "event"
    assert got.api_version
    assert isinstance(got.created, int)
    charge = client.v1.charges.retrieve(got.data.object["id"])
    assert charge.object == "charge"
    assert int(charge.metadata["sim_version"]) >= int(got.data.object["metadata"]["sim_version"])


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"type": "charge.succeeded", "types": ["charge.failed"]},
        {"types": [f"charge.t{i}" for i in range(21)]},
        {"starting_after": "evt_doesnotexist"},
        {"starting_after": "evt_1", "ending_before": "evt_2"},
        {"created": {"gt": "yesterday"}},
    ],
)
def test_bad_params_raise_invalid_request(
    client: stripe.StripeClient, params: dict[str, object]
) -> None:
    """Out-of-range limits, type+types, >20 types, unknown cursors, both cursors and malformed
    created filters are 400s the SDK raises as InvalidRequestError."""
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.events.list(params)  # type: ignore[arg-type]  # deliberately invalid params
    assert info.value.http_status == 400


def test_unknown_event_is_404(client: stripe.StripeClient) -> None:
    """Retrieving an id that never existed is InvalidRequestError with HTTP 404."""
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.events.retrieve("evt_1NoSuchEventAtAll0000000")
    assert info.value.http_status == 404


@pytest.mark.parametrize("key", ["sk_live_abcdef123456", "pk_test_abcdef", "nonsense"])
def test_bad_keys_raise_authentication_error(running_sim: RunningSim, key: str) -> None:
    """Anything but an sk_test_/rk_test_ key is a 401 AuthenticationError."""
    bad = stripe.StripeClient(key, base_addresses={"api": running_sim.url}, max_network_retries=0)
    with pytest.raises(stripe.AuthenticationError):
        bad.v1.events.list()


def test_restricted_key_and_connected_account_stream(
    running_sim: RunningSim,
) -> None:
    """An rk_test_ key works, and Stripe-Account selects the account's own stream whose events
    carry `account`."""
    rk = stripe.StripeClient(
        "rk_test_restricted", base_addresses={"api": running_sim.url}, max_network_retries=0
    )
    acct = "acct_1SimConnectAlpha01"
    events = list(rk.v1.events.list({"limit": 100}, {"stripe_account": acct}).auto_paging_iter())
    truth = [r for r in running_sim.sim.truth() if r["api"] == "v1" and r["account"] == acct]
    assert {e.id for e in events} == {r["id"] for r in truth}
    assert events
    assert all(e.account == acct for e in events)


def test_close_dispute_once(client: stripe.StripeClient) -> None:
    """Closing a dispute makes it lost and emits charge.dispute.closed; closing again is a 400."""
    disputes = client.v1.events.list({"type": "charge.dispute.created", "limit": 100}).data
    for ev in disputes:
        try:
            dispute = client.v1.disputes.close(ev.data.object["id"])
            break
        except stripe.InvalidRequestError:
            continue  # deleted or already closed in the history
    else:
        pytest.fail("no closable dispute in the default scenario")
    assert dispute.status == "lost"
    latest = client.v1.events.list({"type": "charge.dispute.closed", "limit": 1}).data[0]
    assert latest.data.object["id"] == dispute.id
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.disputes.close(dispute.id)
    assert info.value.http_status == 400


def test_file_upload_emits_file_created(client: stripe.StripeClient) -> None:
    """A multipart upload creates a file object readable by id, announced by file.created."""
    upload = io.BytesIO(b"%PDF-1.4 hello")
    upload.name = "evidence.pdf"
    created = client.v1.files.create({"purpose": "dispute_evidence", "file": upload})
    assert created.id.startswith("file_")
    assert created.size == len(b"%PDF-1.4 hello")
    assert client.v1.files.retrieve(created.id).filename == "evidence.pdf"
    latest = client.v1.events.list({"type": "file.created", "limit": 1}).data[0]
    assert latest.data.object["id"] == created.id


def test_own_account_and_connected_accounts_are_listed(client: stripe.StripeClient) -> None:
    """`GET /v1/account` answers for the key's platform; `GET /v1/accounts` lists the connected
    accounts whose streams exist."""
    assert client.v1.accounts.retrieve_current().object == "account"
    ids = [a.id for a in client.v1.accounts.list().auto_paging_iter()]
    assert ids == ["acct_1SimConnectAlpha01", "acct_1SimConnectBravo02"]
