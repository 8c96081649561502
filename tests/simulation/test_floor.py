"""The decoding-floor measurement (`python -m tests.simulation.floor`): it keeps every answer
the service read and times decoding exactly those."""

from __future__ import annotations

from tests.simulation.floor import kind_of, measure
from tests.simulation.world import SWEEP_WINDOW_S, Plan, Step


def test_answers_are_classed_by_what_was_asked() -> None:
    """The two event lists and the related-object retrieves are told apart by path alone."""
    assert kind_of("https://api.stripe.com/v1/events?limit=100&created[gte]=1") == "v1 list"
    assert kind_of("https://api.stripe.com/v2/core/events?limit=100") == "v2 list"
    assert kind_of("https://api.stripe.com/v1/charges/ch_1") == "retrieve"
    assert kind_of("https://api.stripe.com/v2/core/accounts/acct_1") == "retrieve"


def test_the_floor_times_every_answer_the_service_read() -> None:
    """Every answer the simulator counted was recorded and decoded once per round: a short
    run with v2 events has list pages of both kinds and retrieves, every published event
    was listed at least once, and the decoding took some time but far less than the run."""
    plan = Plan(
        seed=7,
        hours=0.03,
        rate=5.0,
        late_share=0.05,
        lag_max=SWEEP_WINDOW_S - 60,
        v2_share=0.3,
        accounts=(),
        steps=(Step(40.0, "crash"),),
    )
    floor = measure(plan)
    assert floor.report.ok, floor.report.failure()
    assert set(floor.answers) == {"v1 list", "v2 list", "retrieve"}
    assert sum(floor.answers.values()) == floor.report.requests
    assert floor.listed >= floor.report.events > 0
    assert 0 < floor.decode_seconds < floor.report.wall_seconds
    assert "per simulated day" in floor.lines()[-1]
