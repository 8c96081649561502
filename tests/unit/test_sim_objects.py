"""Simulator objects: built by the project's factories, realistic, served with Stripe's shape."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import orjson
import pytest

from ingestor.data import event_types
from ingestor.sim import SimServer, factories, load_scenario
from ingestor.sim.catalog import KINDS
from ingestor.sim.events_time import parse_rfc3339_ms
from ingestor.sim.simulator import Simulator

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": "Bearer sk_test_unit"}
# One event type that makes (or touches) an object of each kind the simulator serves.
TYPE_FOR_KIND = {
    "charge": ("charge.succeeded", "v1"),
    "dispute": ("charge.dispute.created", "v1"),
    "refund": ("charge.refund.updated", "v1"),
    "customer": ("customer.created", "v1"),
    "subscription": ("customer.subscription.created", "v1"),
    "invoice": ("invoice.created", "v1"),
    "payment_intent": ("payment_intent.created", "v1"),
    "file": ("file.created", "v1"),
    "billing.meter": ("billing.meter.created", "v1"),
    "product": ("product.created", "v1"),
    "price": ("price.created", "v1"),
    "payout": ("payout.created", "v1"),
    "v2.core.account": ("v2.core.account.created", "v2"),
}
# Smallest serialised size of each kind's object, near what Stripe's own examples weigh.
MIN_BYTES = {
    "charge": 2800,
    "dispute": 1200,
    "refund": 450,
    "customer": 850,
    "subscription": 2900,
    "invoice": 3400,
    "payment_intent": 1300,
    "file": 1000,
    "billing.meter": 400,
    "product": 500,
    "price": 450,
    "payout": 650,
    "account": 2000,
    "v2.core.account": 1400,
    # Stripe's application object is small: id, object and name.
    "application": 100,
}


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_event_types", ROOT / "dev/gen_event_types.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_event_type_list_matches_the_installed_stripe_sdk() -> None:
    """ingestor/data/event-types.txt is exactly what dev/gen_event_types.py makes from the
    installed `stripe` package: a new SDK with new types fails here until it is regenerated."""
    gen = _load_generator()
    shipped = (ROOT / "ingestor/data/event-types.txt").read_text(encoding="utf-8")
    assert shipped == gen.render(gen.from_sdk())
    assert gen.main(["gen_event_types.py", "--check"]) == 0
    types = event_types()
    assert "charge.dispute.closed" in types["v1"]
    assert "v2.core.account.created" in types["v2"]
    assert not set(types["v1"]) & set(types["v2"])


def test_the_generator_check_fails_when_the_file_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--check` exits 1 when the file lacks a type the SDK has."""
    gen = _load_generator()
    stale = tmp_path / "event-types.txt"
    stale.write_text(gen.render(gen.from_sdk()).replace("charge.succeeded\n", ""), "utf-8")
    monkeypatch.setattr(gen, "OUT", stale)
    assert gen.main(["gen_event_types.py", "--check"]) == 1


def test_factories_cover_every_served_kind_with_realistic_sizes() -> None:
    """Each kind the simulator serves (and v1 accounts) has a factory whose object carries its
    id, kind and created, embeds the id where Stripe's URLs do, and weighs what Stripe's does."""
    assert {k.name for k in KINDS} | {"account"} == set(factories.FACTORIES)
    for kind, factory in factories.FACTORIES.items():
        created: int | str = "2026-01-02T03:04:05.678Z" if kind.startswith("v2.") else 1_767_225_600
        obj = factory("x_1SimTestId0000000000000", created)
        assert (obj["id"], obj["object"], obj["created"]) == (
            "x_1SimTestId0000000000000",
            kind,
            created,
        )
        # Stripe's File has neither field, a billing meter no metadata.
        assert kind == "file" or obj["livemode"] is False, kind
        assert kind in {"file", "billing.meter"} or obj["metadata"] == {}, kind
        assert len(orjson.dumps(obj)) >= MIN_BYTES[kind], kind
    assert factories.charge("ch_9", 1)["refunds"]["url"] == "/v1/charges/ch_9/refunds"


def test_the_simulator_reads_nothing_outside_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the working directory somewhere else entirely, the default scenario still builds
    full objects for every kind (no folder beside the repository, no environment variable)."""
    monkeypatch.chdir("/")
    monkeypatch.delenv("INGESTOR_STRIPE_DATA", raising=False)
    scenario = dataclasses.replace(load_scenario(None), history_events=50, history_bursts=0)
    sim = Simulator(scenario, seed=1)
    for kind, (event_type, api) in TYPE_FOR_KIND.items():
        [event_id] = sim.add_events(1, type=event_type, api=api)
        serial = sim.views.find_event(event_id)
        assert serial is not None
        obj = orjson.loads(sim.views.current_object(sim.events.obj[serial]))
        assert obj["object"] == kind
        # The simulator tracks versions in metadata, so even a file carries it.
        assert obj.keys() - {"livemode", "metadata"} == factories.build(kind, "x", 0).keys() - {
            "livemode",
            "metadata",
        }, kind
        assert obj["metadata"]["sim_version"] == "1"


@pytest.fixture
async def server() -> AsyncIterator[SimServer]:
    scenario = dataclasses.replace(load_scenario(None), history_events=0, history_bursts=0)
    async with SimServer(scenario, seed=5) as srv:
        yield srv


async def _post(http: aiohttp.ClientSession, url: str, **body: Any) -> Any:
    async with http.post(url, json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_served_objects_have_their_ids_dates_and_the_dispute_close_shape(
    server: SimServer,
) -> None:
    """GET returns the factory object with the simulator's id (also inside its URLs) and
    created; `POST /v1/disputes/:id/close` answers a lost dispute with evidence,
    evidence_details, balance_transactions and is_charge_refundable, as Stripe documents."""
    async with aiohttp.ClientSession(headers=AUTH) as http:
        [evt] = (
            await _post(http, server.url + "/_sim/events", type="customer.subscription.created")
        )["ids"]
        async with http.get(f"{server.url}/v1/events/{evt}") as r:
            event = await r.json()
        sub = event["data"]["object"]
        assert sub["id"].startswith("sub_")
        assert sub["created"] == event["created"]
        assert sub["items"]["url"] == f"/v1/subscription_items?subscription={sub['id']}"
        assert sub["items"]["data"][0]["subscription"] == sub["id"]
        [evt] = (await _post(http, server.url + "/_sim/events", type="charge.dispute.created"))[
            "ids"
        ]
        async with http.get(f"{server.url}/v1/events/{evt}") as r:
            dispute_id = (await r.json())["data"]["object"]["id"]
        closed = await _post(http, f"{server.url}/v1/disputes/{dispute_id}/close")
        assert closed["id"] == dispute_id
        assert closed["status"] == "lost"
        assert set(closed["evidence"]) >= {"customer_name", "uncategorized_text", "receipt"}
        assert set(closed["evidence_details"]) >= {"due_by", "has_evidence", "submission_count"}
        assert isinstance(closed["balance_transactions"], list)
        assert isinstance(closed["is_charge_refundable"], bool)
        async with http.get(server.url + "/v2/core/events") as r:
            assert r.status == 200


def test_optional_stripe_fixtures_replace_the_factories_objects(tmp_path: Path) -> None:
    """A scenario naming a fixtures3.json serves that file's example for the kinds it has and
    the factories' object for the rest."""
    example = {"id": "ch_x", "object": "charge", "amount": 7, "status": "succeeded"}
    path = tmp_path / "fixtures3.json"
    path.write_bytes(orjson.dumps({"resources": {"charge": example}}))
    scenario = dataclasses.replace(
        load_scenario(None), history_events=0, history_bursts=0, stripe_fixtures=str(path)
    )
    sim = Simulator(scenario, seed=2)
    objects = {}
    for kind in ("charge", "customer"):
        [event_id] = sim.add_events(1, type=TYPE_FOR_KIND[kind][0])
        serial = sim.views.find_event(event_id)
        assert serial is not None
        objects[kind] = orjson.loads(sim.views.current_object(sim.events.obj[serial]))
    assert set(objects["charge"]) == {
        "id",
        "object",
        "amount",
        "status",
        "created",
        "livemode",
        "metadata",
    }
    assert objects["charge"]["amount"] == 7
    assert objects["customer"].keys() == factories.customer("x", 0).keys()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02T03:04:05.678Z", datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)),
        ("2026-01-02t03:04:05.6789z", datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)),
        ("2026-01-02T05:04:05+02:00", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-01T23:34:05-03:30", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ],
)
def test_sim_rfc3339_parser_reads_zulu_fractions_and_offsets(text: str, expected: datetime) -> None:
    """The simulator's own parser turns RFC 3339 text into unix ms, fraction truncated to ms."""
    assert parse_rfc3339_ms(text) == int(expected.timestamp() * 1000)


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-02",
        "1767225600",
        "2026-01-02T03:04:05",
        "2026-02-30T00:00:00Z",
        "2026-01-02T03:04:05+24:00",
        "",
    ],
)
def test_sim_rfc3339_parser_rejects_what_is_not_rfc3339(text: str) -> None:
    """Bare dates, numbers, times without an offset, impossible dates and offsets: ValueError."""
    with pytest.raises(ValueError, match="not an RFC 3339 time"):
        parse_rfc3339_ms(text)


def test_sim_does_not_import_the_products_time_parser() -> None:
    """ingestor.sim.events_time stands alone, so a bug in ingestor.events cannot hide itself."""
    source = (ROOT / "ingestor/sim/events_time.py").read_text(encoding="utf-8")
    assert "ingestor.events" not in source
    assert "rfc3339_to_ms" not in source
