"""Simulator paging edge cases, checked on the in-memory Simulator (no sockets)."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from ingestor.sim import Simulator, load_scenario
from ingestor.sim.listing import Window, list_v1, list_v2
from ingestor.sim.problems import ApiError

START = 1_790_000_000  # a fixed clock start keeps runs byte-identical


def small(**changes: object) -> Simulator:
    scenario = dataclasses.replace(
        load_scenario(None),
        start_time=START,
        history_events=300,
        history_bursts=0,
        accounts=(),
        **changes,  # type: ignore[arg-type]  # each test passes fields of the right type
    )
    return Simulator(scenario, seed=11)


def page(sim: Simulator, limit: int = 100, **kw: str | None) -> dict[str, object]:
    window = kw.pop("window", None) or Window()
    # kw holds only the cursor strings list_v1 takes.
    data: dict[str, object] = orjson.loads(list_v1(sim, None, window, limit, **kw))  # type: ignore[arg-type]
    return data


def ids(p: dict[str, object]) -> list[str]:
    return [e["id"] for e in p["data"]]  # type: ignore[attr-defined]  # JSON list of dicts


def walk_older(sim: Simulator, limit: int, window: Window | None = None) -> list[str]:
    out: list[str] = []
    cursor = None
    while True:
        p = page(sim, limit, starting_after=cursor, window=window)  # type: ignore[arg-type]  # window: a kw
        out += ids(p)
        if not p["has_more"]:
            return out
        cursor = out[-1]


def test_same_second_burst_of_250_walked_with_limit_100_loses_and_doubles_nothing() -> None:
    """250 events in one second, paged with starting_after and limit 100: each appears once."""
    sim = small()
    burst = sim.add_events(250, type="charge.succeeded", created=START - 100)
    walked = walk_older(sim, 100)
    v1 = {r["id"] for r in sim.truth() if r["api"] == "v1"}
    assert len(walked) == len(set(walked)) == len(v1)
    assert set(walked) == v1
    assert set(burst) <= set(walked)
    one_second = walk_older(sim, 100, Window(lo_ms=(START - 100) * 1000, hi_ms=(START - 99) * 1000))
    assert sorted(one_second) == sorted(burst)


def test_ending_before_returns_the_events_just_newer_than_the_cursor_newest_first() -> None:
    """ending_before gives the `limit` events immediately newer than the cursor, newest first,
    with has_more telling whether even newer ones exist."""
    sim = small()
    everything = walk_older(sim, 100)
    cursor = everything[150]
    p = page(sim, 10, ending_before=cursor)
    assert ids(p) == everything[140:150]
    assert p["has_more"] is True
    top = page(sim, 10, ending_before=everything[5])
    assert ids(top) == everything[:5]
    assert top["has_more"] is False


def test_late_event_appears_later_behind_the_cursor_at_its_created_position() -> None:
    """An event created earlier but visible only after its lag is invisible at first, then
    listed at its `created` position: not newer than the head a tailer already holds."""
    sim = small()
    newest = page(sim, 1)["data"][0]  # type: ignore[index]  # JSON list of dicts
    head = newest["id"]
    [late] = sim.add_events(
        1, type="customer.updated", created=newest["created"] - 1, lag_seconds=5
    )
    assert late not in walk_older(sim, 100)
    assert late not in {r["id"] for r in sim.truth()}
    sim.advance_clock(6)
    everything = walk_older(sim, 100)
    assert late in everything
    assert late in {r["id"] for r in sim.truth()}
    assert ids(page(sim, 100, ending_before=head)) == []  # behind the head cursor
    created = [
        orjson.loads(sim.views.v1_event(sim.views.find_event(i) or 0))["created"]
        for i in everything
    ]
    assert created == sorted(created, reverse=True)


def test_retention_hides_events_older_than_30_days_and_rejects_their_cursors() -> None:
    """History older than 30 days is gone; a cursor that ages out becomes a 400."""
    sim = small(history_span_seconds=40 * 86400.0)
    cutoff = START - 30 * 86400
    listed = walk_older(sim, 100)
    truth = sim.truth()
    v1 = [r for r in truth if r["api"] == "v1"]
    assert {r["id"] for r in v1 if r["created"] >= cutoff} == set(listed)
    assert any(r["created"] < cutoff for r in v1)
    oldest = listed[-1]
    sim.advance_clock(3 * 86400)
    with pytest.raises(ApiError) as info:
        page(sim, 10, starting_after=oldest)
    assert info.value.status == 400
    assert info.value.param == "starting_after"


def test_unknown_cursor_is_a_400() -> None:
    """A cursor id the simulator never issued is invalid_request_error 400."""
    sim = small()
    with pytest.raises(ApiError) as info:
        page(sim, 10, starting_after="evt_nope")
    assert info.value.status == 400


def test_v2_page_tokens_walk_both_ways() -> None:
    """next_page_url walks older pages, previous_page_url walks back to the newer ones."""
    sim = small(v2_share=1.0)
    first = orjson.loads(list_v2(sim, None, Window(), 40))
    assert first["previous_page_url"] is None
    assert first["next_page_url"].startswith("/v2/core/events?page=")
    token = first["next_page_url"].split("page=")[1]
    second = orjson.loads(list_v2(sim, None, Window(), 0, page=token))
    assert len(second["data"]) == 40
    assert not {e["id"] for e in first["data"]} & {e["id"] for e in second["data"]}
    back = second["previous_page_url"].split("page=")[1]
    again = orjson.loads(list_v2(sim, None, Window(), 0, page=back))
    assert [e["id"] for e in again["data"]] == [e["id"] for e in first["data"]]


def test_same_seed_same_account_different_seed_different_ids() -> None:
    """Everything is seeded: same scenario + seed gives identical events; another seed does not."""
    scenario = dataclasses.replace(load_scenario(None), start_time=START)
    a, b, c = (Simulator(scenario, seed=s) for s in (5, 5, 6))
    assert a.truth_bytes() == b.truth_bytes()
    assert list_v1(a, None, Window(), 100) == list_v1(b, None, Window(), 100)
    assert a.truth_bytes() != c.truth_bytes()


def test_default_scenario_meets_its_floor() -> None:
    """Default: >= 1000 v1 events of >= 8 types, a same-second burst >= 50, >= 100 v2 events
    whose related objects resolve."""
    sim = Simulator(None, seed=0)
    truth = sim.truth()
    v1 = [r for r in truth if r["api"] == "v1"]
    v2 = [r for r in truth if r["api"] == "v2"]
    assert len(v1) >= 1000
    assert len({r["type"] for r in v1}) >= 8
    per_second: dict[int, int] = {}
    for r in v1:
        per_second[r["created"]] = per_second.get(r["created"], 0) + 1
    assert max(per_second.values()) >= 50
    resolvable = [r for r in v2 if r["object_id"] and sim.find_object(r["object_id"]) is not None]
    live = [r for r in resolvable if not sim.objects.deleted[sim.find_object(r["object_id"]) or 0]]
    assert len(live) >= 100
