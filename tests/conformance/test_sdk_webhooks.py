"""The official stripe SDK verifies and parses the simulator's webhook deliveries."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping

import pytest
import stripe

from ingestor.sim import Simulator, load_scenario
from ingestor.sim.scenario import Destination
from ingestor.sim.webhooks import WebhookDeliverer

SECRET = "whsec_conformanceDeliverer42"
ACCOUNT = "acct_1SimConnectAlpha01"


async def deliveries(kind: str, api: str) -> tuple[list[str], list[tuple[bytes, str]]]:
    """Events added to a simulator, and every (body, Stripe-Signature) its deliverer sent to
    a `kind` destination, the first two attempts of each failing (so retries are covered)."""
    sim = Simulator(
        dataclasses.replace(load_scenario(None), history_events=20, history_bursts=0), seed=8
    )
    sent: list[tuple[bytes, str]] = []
    failures: dict[bytes, int] = {}

    async def send(dest: Destination, body: bytes, headers: Mapping[str, str]) -> int:
        sent.append((body, headers["Stripe-Signature"]))
        failures[body] = failures.get(body, 0) + 1
        return 500 if failures[body] <= 2 else 200

    dest = Destination(
        url="http://receiver.test/hooks",
        secret=SECRET,
        kind=kind,
        backoff_initial_seconds=0.01,
        backoff_max_seconds=0.05,
    )
    async with WebhookDeliverer(sim, (dest,), send=send, poll_interval_seconds=0.01) as d:
        ids = sim.add_events(4, api=api) + sim.add_events(2, api=api, account=ACCOUNT)
        async with asyncio.timeout(30):
            await d.idle()
    return ids, sent


async def test_construct_event_accepts_snapshot_deliveries() -> None:
    """stripe.Webhook.construct_event verifies every snapshot delivery (retries included)
    with the destination's secret and parses the event the simulator made; with another
    secret it raises SignatureVerificationError."""
    ids, sent = await deliveries("snapshot", "v1")
    assert len(sent) == 3 * len(ids)
    parsed = [stripe.Webhook.construct_event(body, header, SECRET) for body, header in sent]
    assert {e.id for e in parsed} == set(ids)
    assert all(e.object == "event" for e in parsed)
    assert {e.to_dict().get("account") for e in parsed} == {None, ACCOUNT}
    body, header = sent[0]
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, header, "whsec_someoneElse")


async def test_parse_event_notification_accepts_thin_deliveries() -> None:
    """StripeClient.parse_event_notification verifies every thin delivery and reads the
    notification's id, type and context as the simulator made them."""
    ids, sent = await deliveries("thin", "v2")
    client = stripe.StripeClient("sk_test_conformance")
    notes = [client.parse_event_notification(body, header, SECRET) for body, header in sent]
    assert {n.id for n in notes} == set(ids)
    assert {None if n.context is None else str(n.context) for n in notes} == {None, ACCOUNT}
    assert all(n.type for n in notes)
    with pytest.raises(stripe.SignatureVerificationError):
        client.parse_event_notification(sent[0][0], sent[0][1], "whsec_someoneElse")
