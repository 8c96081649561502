"""What the simulator knows about Stripe: event type names, object kinds, and example objects.

Type names are the package's own data (`ingestor/data/event-types.txt`); objects come from
`ingestor.sim.factories`. Stripe's OpenAPI example objects (`fixtures3.json`) are an optional
extra that the scenario's `stripe_fixtures` setting names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ingestor.data import event_types
from ingestor.sim.scenario import Scenario


@dataclass(frozen=True, slots=True)
class Kind:
    """One object type events refer to, and where its objects live in the API."""

    name: str  # Stripe's `object` value, also the v2 related_object.type
    id_prefix: str
    collection: str  # URL path of the collection; an object is at f"{collection}/{id}"
    v2_style: bool = False  # v2 objects write `created` as RFC 3339


KINDS: tuple[Kind, ...] = (
    Kind("charge", "ch_", "/v1/charges"),
    Kind("dispute", "dp_", "/v1/disputes"),
    Kind("refund", "re_", "/v1/refunds"),
    Kind("customer", "cus_", "/v1/customers"),
    Kind("subscription", "sub_", "/v1/subscriptions"),
    Kind("invoice", "in_", "/v1/invoices"),
    Kind("payment_intent", "pi_", "/v1/payment_intents"),
    Kind("file", "file_", "/v1/files"),
    Kind("billing.meter", "mtr_", "/v1/billing/meters"),
    Kind("product", "prod_", "/v1/products"),
    Kind("price", "price_", "/v1/prices"),
    Kind("payout", "po_", "/v1/payouts"),
    Kind("v2.core.account", "acct_", "/v2/core/accounts", v2_style=True),
    # The platform's Connect application, what account.application.* events are about.
    Kind("application", "ca_", "/v1/applications"),
)
KIND_BY_NAME = {k.name: k for k in KINDS}

# Longest prefix first: `charge.dispute.closed` is about a dispute, not a charge.
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("charge.dispute.", "dispute"),
    ("charge.refund.", "refund"),
    ("charge.", "charge"),
    ("customer.subscription.", "subscription"),
    ("customer.", "customer"),
    ("invoice.", "invoice"),
    ("payment_intent.", "payment_intent"),
    ("file.", "file"),
    ("billing.meter.", "billing.meter"),
    ("product.", "product"),
    ("price.", "price"),
    ("payout.", "payout"),
    ("refund.", "refund"),
    ("v2.core.account.", "v2.core.account"),
    ("v2.core.account[", "v2.core.account"),
    ("account.application.", "application"),
)
# v2 notifications that carry no related object at all.
NO_RELATED = frozenset({"v1.billing.meter.no_meter_found", "v2.core.event_destination.ping"})

# Object status after an event of this (kind, action); unlisted pairs keep the previous status.
STATUS: dict[tuple[str, str], str] = {
    ("charge", "succeeded"): "succeeded",
    ("charge", "captured"): "succeeded",
    ("charge", "failed"): "failed",
    ("charge", "pending"): "pending",
    ("charge", "expired"): "failed",
    ("dispute", "created"): "needs_response",
    ("dispute", "updated"): "under_review",
    ("dispute", "funds_withdrawn"): "needs_response",
    ("dispute", "funds_reinstated"): "won",
    ("dispute", "closed"): "lost",
    ("invoice", "created"): "draft",
    ("invoice", "finalized"): "open",
    ("invoice", "paid"): "paid",
    ("invoice", "payment_succeeded"): "paid",
    ("invoice", "voided"): "void",
    ("invoice", "marked_uncollectible"): "uncollectible",
    ("payment_intent", "created"): "requires_payment_method",
    ("payment_intent", "processing"): "processing",
    ("payment_intent", "requires_action"): "requires_action",
    ("payment_intent", "succeeded"): "succeeded",
    ("payment_intent", "payment_failed"): "requires_payment_method",
    ("payment_intent", "canceled"): "canceled",
    ("subscription", "created"): "active",
    ("subscription", "paused"): "paused",
    ("subscription", "resumed"): "active",
    ("subscription", "deleted"): "canceled",
    ("billing.meter", "created"): "active",
    ("billing.meter", "deactivated"): "inactive",
    ("billing.meter", "reactivated"): "active",
    ("payout", "created"): "pending",
    ("payout", "paid"): "paid",
    ("payout", "failed"): "failed",
    ("payout", "canceled"): "canceled",
    ("v2.core.account", "closed"): "closed",
}


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """What an event type does to the object it is about."""

    name: str
    api: str  # "v1" | "v2"
    kind: Kind | None
    action: str
    deletes: bool
    status: str | None


def describe(event_type: str, api: str) -> TypeInfo:
    """Classifies an event type; raises ValueError for types the simulator cannot model."""
    bare = event_type[3:] if api == "v2" and event_type.startswith("v1.") else event_type
    if event_type in NO_RELATED:
        return TypeInfo(event_type, api, None, bare.rsplit(".", 1)[-1], False, None)
    for prefix, kind_name in _PREFIXES:
        if bare.startswith(prefix):
            kind = KIND_BY_NAME[kind_name]
            action = bare.rsplit(".", 1)[-1]
            rest = bare[len(prefix) :]
            # `customer.deleted` deletes the customer; `customer.discount.deleted` does not.
            deletes = action == "deleted" and "." not in rest
            if kind_name == "subscription":
                deletes = False  # a deleted subscription stays readable as canceled
            return TypeInfo(event_type, api, kind, action, deletes, STATUS.get((kind_name, action)))
    raise ValueError(f"the simulator has no object model for event type {event_type!r}")


@dataclass(frozen=True, slots=True)
class Catalog:
    """Event type names by api, and Stripe's example objects by kind when a scenario asks."""

    v1_types: frozenset[str]
    v2_types: frozenset[str]
    examples: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, stripe_fixtures: str = "") -> Catalog:
        """The package's type names; with a path to Stripe's `fixtures3.json`, its objects
        replace the factories' for the kinds it has."""
        types = event_types()
        examples: dict[str, dict[str, Any]] = {}
        if stripe_fixtures:
            resources = orjson.loads(Path(stripe_fixtures).read_bytes())["resources"]
            # "account": the v1 connected accounts GET /v1/accounts lists.
            names = [*KIND_BY_NAME, "account"]
            examples = {name: resources[name] for name in names if name in resources}
        return cls(frozenset(types["v1"]), frozenset(types["v2"]), examples)

    def check(self, scenario: Scenario) -> None:
        """Every type in the scenario's mix is a real Stripe type and modelled."""
        for api, weights, known in (
            ("v1", scenario.v1_types, self.v1_types),
            ("v2", scenario.v2_types, self.v2_types),
        ):
            for name, _ in weights:
                if name not in known:
                    raise ValueError(f"scenario {scenario.name!r}: {name!r} is not a {api} type")
                describe(name, api)
