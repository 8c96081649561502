"""Connected accounts: scan planning, connection start times, idle poll intervals and fair
queueing among streams in the limiter."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

import orjson
import pytest

from ingestor import clock
from ingestor.accounts import (
    AUTHORIZED,
    DEAUTHORIZED,
    GONE,
    LISTING_SETTLE_MS,
    AccountDirectory,
    Change,
    Joined,
    Left,
    Listed,
    connection_start,
    feed,
    plan_scan,
)
from ingestor.events import Event, Stream
from ingestor.plan import RETENTION_MS, retention_edge
from ingestor.ratelimit import RateBudget, fair_key
from ingestor.sim import listing, load_scenario
from ingestor.sim.simulator import Simulator
from ingestor.tail import next_poll_interval

NOW = 1_790_000_000_000
DAY = 86_400_000


def test_first_scan_marks_every_account_initial_with_its_connection_time() -> None:
    """The first scan joins every listed account as `initial`, with its connection start."""
    listed = [Listed("acct_a", NOW - DAY), Listed("acct_b", None)]
    change = plan_scan({}, listed, first=True, authorized_ms={}, now_ms=NOW)
    assert change.joined == (Joined("acct_a", NOW - DAY, True), Joined("acct_b", NOW, True))
    assert change.left == ()


def test_a_later_scan_joins_only_new_accounts_from_their_connection_time() -> None:
    """Accounts found after the first scan start where they were connected: the authorized
    event's time when seen, else the account's created; known ones are not joined again."""
    known = {"acct_a": True}
    listed = [Listed("acct_a", NOW - DAY), Listed("acct_b", NOW - 2 * DAY), Listed("acct_c")]
    change = plan_scan(
        known, listed, first=False, authorized_ms={"acct_b": NOW - 60_000}, now_ms=NOW
    )
    assert change.joined == (Joined("acct_b", NOW - 60_000), Joined("acct_c", NOW))


def test_an_account_missing_from_the_listing_leaves_once_and_rejoins_when_listed() -> None:
    """A known account gone from the listing leaves with a reason (not dropped silently);
    one already gone does not leave again; listed again, it joins with no start."""
    change = plan_scan(
        {"acct_a": True, "acct_b": False}, [], first=False, authorized_ms={}, now_ms=NOW
    )
    assert change.left == (Left("acct_a", GONE),)
    back = plan_scan(
        {"acct_a": False}, [Listed("acct_a", 0)], first=False, authorized_ms={}, now_ms=NOW
    )
    assert back.joined == (Joined("acct_a", None),)
    assert not plan_scan(
        {"acct_a": True}, [Listed("acct_a")], first=False, authorized_ms={}, now_ms=NOW
    )


def test_connection_start_is_clamped_to_retention_and_never_in_the_future() -> None:
    """A connection older than Stripe's 30 days starts inside retention (with a margin, so
    the catch-up cannot age out); one 'in the future' (clock skew) starts now; whole
    seconds for v1."""
    old = connection_start(None, NOW - 90 * DAY, NOW)
    assert retention_edge(NOW) < old < NOW - RETENTION_MS + DAY
    assert connection_start(NOW + 5000, None, NOW) == NOW
    assert connection_start(NOW - 1234, None, NOW, 1000) == NOW - 2000
    assert connection_start(NOW - 1234, None, NOW, 1) == NOW - 1234
    # The authorized event wins over the account's created.
    assert connection_start(NOW - 10_000, NOW - DAY, NOW) == NOW - 10_000


class _Owner:
    def __init__(self) -> None:
        self.added: list[tuple[list[Stream], int | None, bool]] = []
        self.parked: list[tuple[list[Stream], str]] = []

    def add_streams(
        self, streams: Sequence[Stream], start_ms: int | None, *, initial: bool = False
    ) -> None:
        self.added.append((list(streams), start_ms, initial))

    def park_streams(self, streams: Sequence[Stream], reason: str) -> None:
        self.parked.append((list(streams), reason))


def test_feed_applies_changes_to_the_streams_of_owned_accounts_only() -> None:
    """`feed` turns account changes into stream changes for each api, filtered by `owns`
    (a shard's share of the accounts)."""
    owner = _Owner()
    apply = feed(owner, ["v1", "v2"], owns=lambda a: a != "acct_other")
    apply(
        Change(
            (Joined("acct_a", 5, False), Joined("acct_other", 6, False)),
            (Left("acct_b", "gone"), Left("acct_other", "gone")),
        )
    )
    assert owner.added == [([Stream("v1", "acct_a"), Stream("v2", "acct_a")], 5, False)]
    assert owner.parked == [([Stream("v1", "acct_b"), Stream("v2", "acct_b")], "gone")]


def test_idle_poll_interval_doubles_to_the_cap_and_resets_on_news() -> None:
    """Polls that find nothing double the wait up to the cap; news resets it to the base;
    a cap below the base leaves the base."""
    waits = []
    w = 1.0
    for _ in range(12):
        w = next_poll_interval(w, 0, 1.0, 400.0)
        waits.append(w)
    assert waits[:4] == [2.0, 4.0, 8.0, 16.0]
    assert max(waits) == 400.0
    assert waits[-1] == 400.0
    assert next_poll_interval(400.0, 3, 1.0, 400.0) == 1.0
    assert next_poll_interval(1.0, 0, 1.0, 0.2) == 1.0


async def test_one_busy_stream_cannot_starve_another_in_the_limiter() -> None:
    """With 40 requests of one stream queued first, a request of another stream at the same
    priority is served within a couple of tokens, not after the 40 (fair queueing)."""
    t = [0.0]

    async def sleep(seconds: float) -> None:
        t[0] += seconds
        await asyncio.sleep(0)

    budget = RateBudget(10.0, burst=1.0, clock=lambda: t[0], sleep=sleep, report=False)
    order: list[str] = []

    async def request(party: str, n: int) -> None:
        fair_key.set(party)
        await budget.acquire()
        order.append(f"{party}{n}")

    async with asyncio.TaskGroup() as tg:
        for n in range(40):
            tg.create_task(request("busy", n))
        await asyncio.sleep(0)
        for _ in range(3):
            await asyncio.sleep(0)
        tg.create_task(request("idle", 0))
    assert order.index("idle0") <= 3, order[:6]


@pytest.mark.parametrize("parties", [1, 3])
async def test_fair_queueing_keeps_each_partys_own_order(parties: int) -> None:
    """Within one party requests are still served first come, first served."""
    t = [0.0]

    async def sleep(seconds: float) -> None:
        t[0] += seconds
        await asyncio.sleep(0)

    budget = RateBudget(100.0, burst=1.0, clock=lambda: t[0], sleep=sleep, report=False)
    served: list[tuple[int, int]] = []

    async def request(party: int, n: int) -> None:
        fair_key.set(str(party))
        await budget.acquire()
        served.append((party, n))

    async with asyncio.TaskGroup() as tg:
        for n in range(10):
            for p in range(parties):
                tg.create_task(request(p, n))
    for p in range(parties):
        mine = [n for q, n in served if q == p]
        assert mine == sorted(mine)
        assert len(mine) == 10


def test_the_simulator_connects_and_revokes_accounts_mid_run() -> None:
    """Connecting lists the account (created at connection), makes it readable and puts an
    `account.application.authorized` naming it on the platform's v1 stream; revoking takes
    it off the listing, answers 403 for it and puts the deauthorization there too."""
    scenario = load_scenario(None)
    sim = Simulator(dataclasses.replace(scenario, history_events=0, history_bursts=0, accounts=()))
    acct = "acct_1SimLate00000000000000"
    authorized = sim.connect_account(acct)
    listed = orjson.loads(listing.list_accounts(sim, 100, None))["data"]
    assert [(a["id"], a["created"]) for a in listed] == [(acct, sim.now_ms() // 1000)]
    assert sim.api_error_for_account(acct) is None
    page = orjson.loads(listing.list_v1(sim, None, listing.Window(), 100))["data"]
    assert [(e["id"], e["type"], e["account"]) for e in page] == [(authorized, AUTHORIZED, acct)]
    assert sim.truth()[-1]["account"] == acct
    sim.revoke_account(acct)
    assert orjson.loads(listing.list_accounts(sim, 100, None))["data"] == []
    problem = sim.api_error_for_account(acct)
    assert problem is not None
    assert problem.status == 403
    page = orjson.loads(listing.list_v1(sim, None, listing.Window(), 100))["data"]
    assert page[0]["type"] == DEAUTHORIZED
    assert page[0]["account"] == acct


class _ListingClient:
    """Answers GET /v1/accounts with a fixed set of account ids (one page)."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = list(ids)

    async def request_json(self, method: str, path: str, **_kw: object) -> dict[str, object]:
        assert (method, path) == ("GET", "/v1/accounts")
        return {"data": [{"id": i, "created": 1_700_000_000} for i in self.ids], "has_more": False}


def _connect_event(type_name: str, account: str, created_ms: int) -> Event:
    return Event(
        id=f"evt_{type_name}_{created_ms}",
        type=type_name,
        api="v1",
        account=account,
        created_ms=created_ms,
        livemode=False,
        api_version=None,
        object_id=None,
        payload={},
    )


async def _listed_directory(acct: str) -> tuple[AccountDirectory, list[Change]]:
    """A directory whose first scan listed `acct`, and the changes it publishes after it."""
    client = _ListingClient([acct])
    directory = AccountDirectory(client)  # type: ignore[arg-type]  # listing-only fake client
    changes: list[Change] = []
    directory.subscribe(changes.append)
    await directory.scan()
    changes.clear()
    return directory, changes


async def test_a_deauthorization_older_than_a_listing_showing_the_account_parks_nothing() -> None:
    """Finding (seed 9): access revoked and given back while no process ran; the restarted
    process lists the account, then its catch-up reads the old deauthorization. That event
    is older than the listing, so nothing leaves; a deauthorization after the scan (within
    the listing's settle margin) still parks the account at once."""
    acct = "acct_1SimRevoked000000000"
    directory, changes = await _listed_directory(acct)
    now = clock.wall_ms()
    directory.observe([_connect_event(DEAUTHORIZED, acct, now - 600_000)])
    directory.observe([_connect_event(AUTHORIZED, acct, now - 300_000)])
    assert changes == []
    recent = now - LISTING_SETTLE_MS // 2
    directory.observe([_connect_event(DEAUTHORIZED, acct, recent)])
    assert [c.left for c in changes] == [(Left(acct, f"{DEAUTHORIZED} at {recent // 1000}"),)]


async def test_access_revoked_and_given_back_within_one_second_parks_nothing() -> None:
    """Seed 827: revoked and restored within one second (v1's `created` is whole seconds), both
    events on one page, newest first as Stripe lists them. The authorization is not older than
    the deauthorization, so the account stays; before, the tie parked it and `--once` lost
    its events. A deauthorization a second after the authorization still parks it."""
    acct = "acct_1SimRevoked000000000"
    directory, changes = await _listed_directory(acct)
    at = clock.wall_ms() // 1000 * 1000
    directory.observe(
        [_connect_event(AUTHORIZED, acct, at), _connect_event(DEAUTHORIZED, acct, at)]
    )
    assert changes == []
    later = at + 1000
    directory.observe([_connect_event(DEAUTHORIZED, acct, later)])
    assert [c.left for c in changes] == [(Left(acct, f"{DEAUTHORIZED} at {later // 1000}"),)]
