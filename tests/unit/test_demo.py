"""`make demo`'s final check: what landed in Kafka against the simulator's ground truth."""

from __future__ import annotations

from typing import Any

from ingestor.demo import Landed, judge

P = "demo1"


def truth(event_id: str, created_ms: int, serial: int, lag_ms: int = 0) -> dict[str, Any]:
    return {
        "id": event_id,
        "created_ms": created_ms,
        "serial": serial,
        "visible_ms": created_ms + lag_ms,
    }


def at(event_id: str, key: bytes = b"ch_1", topic: str = f"{P}.charge.updated") -> Landed:
    return Landed(topic, 0, key, event_id)


TRUTH = [truth("evt_a", 1000, 1), truth("evt_b", 2000, 2), truth("evt_c", 2000, 3)]


def test_everything_once_and_in_order_is_ok() -> None:
    """Each expected event once, per key oldest first (ties by list order): all zeros, OK."""
    v = judge([at("evt_a"), at("evt_b"), at("evt_c")], {"evt_a", "evt_b", "evt_c"}, TRUTH, P, 2000)
    assert (v.expected, v.published, v.missing, v.duplicated, v.out_of_order) == (3, 3, 0, 0, 0)
    assert v.ok
    assert v.line() == (
        "demo: events expected 3, published 3, missing 0, duplicated 0, out of order 0: OK"
    )


def test_missing_duplicated_and_unknown_events_are_counted_and_wrong() -> None:
    """A lost event, a second copy (here in the DLQ) and an event the simulator never made."""
    landed = [at("evt_a"), at("evt_b"), at("evt_b", topic=f"{P}.dlq"), at("evt_zz")]
    v = judge(landed, {"evt_a", "evt_b", "evt_c"}, TRUTH, P, 2000)
    assert (v.published, v.missing, v.duplicated, v.unknown, v.dead_lettered) == (2, 1, 1, 1, 1)
    assert not v.ok
    assert v.line().endswith(": WRONG")
    assert "not in the ground truth 1" in v.line()


def test_order_is_per_key_and_a_late_event_is_exempt() -> None:
    """Newer before older on one key is out of order (same-second ties by list order too);
    other keys do not interfere; an event Stripe showed later than the overlap may come
    after newer ones."""
    swapped = [at("evt_c"), at("evt_b"), at("evt_a", key=b"ch_2")]
    assert judge(swapped, {"evt_a", "evt_b", "evt_c"}, TRUTH, P, 2000).out_of_order == 1
    late = [*TRUTH[1:], truth("evt_a", 1000, 1, lag_ms=5000)]
    after = [at("evt_b"), at("evt_c"), at("evt_a")]
    v = judge(after, {"evt_a", "evt_b", "evt_c"}, late, P, 2000)
    assert v.out_of_order == 0
    assert v.ok


def test_events_visible_after_the_count_are_not_expected_but_noted() -> None:
    """Published events that became visible after the count are neither missing nor wrong."""
    v = judge([at("evt_a"), at("evt_b"), at("evt_c")], {"evt_a", "evt_b"}, TRUTH, P, 2000)
    assert (v.expected, v.published, v.after) == (2, 2, 1)
    assert v.ok
    assert "1 more that became visible after the count" in v.line()
