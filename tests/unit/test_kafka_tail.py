"""`ingestor tail`'s readable lines and filters, on records built in memory (no broker)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import orjson
import pytest

from ingestor import cli
from ingestor.events import Event, Hydration
from ingestor.kafka_tail import Select, record_line
from ingestor.route import Router
from ingestor.sim import factories


@dataclass
class Consumed:
    """What the tail reads: an aiokafka ConsumerRecord's attributes."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    partition: int = 0
    offset: int = 0


def consumed(event: Event, hydration: Hydration | None = None) -> Consumed:
    [record] = Router("stripe").route(event, hydration, ingest_mode="tail")
    return Consumed(record.topic, record.key, record.value, list(record.headers))


def v1(event_type: str, obj: dict[str, object], account: str | None = None) -> Event:
    payload: dict[str, object] = {
        "id": "evt_1Tail",
        "object": "event",
        "type": event_type,
        "created": 1_767_225_600,
        "livemode": False,
        "data": {"object": obj},
    }
    if account:
        payload["account"] = account
    return Event.from_v1(payload)


def fields(line: str) -> list[str]:
    return re.split(r"\s{2,}", line)


def test_a_charge_line_has_time_type_object_account_amount_and_status() -> None:
    """A v1 charge: created time, type, charge id, account, major-unit amount, status."""
    charge = factories.charge("ch_1Line", 1_767_225_000) | {"amount": 123456, "currency": "usd"}
    line = record_line(consumed(v1("charge.succeeded", charge, "acct_1Conn")))
    assert fields(line) == [
        "2026-01-01 00:00:00",
        "charge.succeeded",
        "ch_1Line",
        "acct_1Conn",
        "1234.56 USD",
        str(charge["status"]),
    ]


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [(500, "jpy", "500 JPY"), (1234, "kwd", "1.234 KWD"), (-5, "eur", "-0.05 EUR")],
)
def test_amounts_follow_the_currency_minor_unit(amount: int, currency: str, shown: str) -> None:
    """Zero-decimal and three-decimal currencies, and refunds' negative amounts, read right."""
    obj = {"id": "txn_1", "amount": amount, "currency": currency}
    assert fields(record_line(consumed(v1("balance.available", obj))))[4] == shown


def test_an_object_without_amount_or_status_shows_neither_and_the_platform() -> None:
    """A customer (no amount, no status) ends at the account column, `platform` for none."""
    line = record_line(consumed(v1("customer.created", {"id": "cus_1", "object": "customer"})))
    assert fields(line)[1:] == ["customer.created", "cus_1", "platform"]


def test_a_v2_envelope_shows_the_related_object_and_a_hydration_not_ok() -> None:
    """v2: the related object's id and status; a failed hydration says so."""
    thin = {
        "id": "evt_test_65RLine",
        "object": "v2.core.event",
        "type": "v2.core.account.updated",
        "created": "2026-01-02T03:04:05.678Z",
        "livemode": False,
        "related_object": {"id": "acct_1Rel", "type": "v2.core.account", "url": "/v2/x"},
    }
    event = Event.from_v2(thin, api_version="2026-10-28.endive")
    ok = record_line(consumed(event, Hydration("ok", 0, {"id": "acct_1Rel", "status": "active"})))
    assert fields(ok)[0] == "2026-01-02 03:04:05"
    assert fields(ok)[1:] == ["v2.core.account.updated", "acct_1Rel", "platform", "active"]
    failed = record_line(consumed(event, Hydration("failed", 0, None, "boom")))
    assert fields(failed)[2:] == ["acct_1Rel", "platform", "hydration:failed"]


def test_a_dead_letter_shows_its_reason_and_junk_still_prints() -> None:
    """A DLQ record names its reason; a value that is not JSON still gives a line (the key)."""
    event = v1("charge.succeeded", {"id": "ch_1"})
    dlq = Router("stripe").dlq_record(event, "too_large", "2 MB > 1 MB")
    line = record_line(Consumed(dlq.topic, dlq.key, dlq.value, list(dlq.headers)))
    assert fields(line)[-1] == "dlq:too_large"
    junk = record_line(Consumed("stripe.x", b"k_1", b"\xff not json"))
    assert fields(junk) == ["-", "stripe.x", "k_1", "platform"]


def test_select_matches_type_globs_and_one_account() -> None:
    """Globs over the event_type header (any of them), `platform` = no account header."""
    charge = consumed(v1("charge.refunded", {"id": "ch_1"}, "acct_1A"))
    customer = consumed(v1("customer.created", {"id": "cus_1"}))
    assert Select(("charge.*",))(charge)
    assert not Select(("charge.*",))(customer)
    assert Select(("invoice.*", "customer.*"))(customer)
    assert Select(account="acct_1A")(charge)
    assert not Select(account="acct_1A")(customer)
    assert Select(account="platform")(customer)
    assert not Select(("charge.*",), "platform")(charge)
    assert orjson.loads(charge.value or b"")["account"] == "acct_1A"


def test_since_and_from_beginning_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse refuses both starts at once (exit 2, naming both)."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["tail", "--since", "1h", "--from-beginning"])
    assert exc.value.code == 2
    assert "--from-beginning" in capsys.readouterr().err


def test_a_bad_since_exits_2_naming_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    """`tail --since soon` is bad configuration: exit 2 and one line, before any Kafka I/O."""
    code = cli.main(["tail", "--since", "soon", "--bootstrap", "127.0.0.1:1"])
    assert code == 2
    assert "--since" in capsys.readouterr().err
