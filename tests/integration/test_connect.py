"""Connect end to end (simulator over sockets, the real broker): with `accounts = all`, an
account connected mid-run is found and read from its connection, and a revoked one is parked
while the others go on."""

from __future__ import annotations

import asyncio

from ingestor.health import Readiness
from ingestor.pipeline import serve
from ingestor.sim.server import SimServer
from tests.integration.harness import (
    check_exactly_once,
    headers,
    make_config,
    metric,
    sim_scenario,
    until,
    wait_published,
)

EARLY = "acct_1SimConnEarly0000000"
REVOKED = "acct_1SimConnRevoked00000"
LATE = "acct_1SimConnLate00000000"


async def test_an_account_connected_mid_run_is_read_and_a_revoked_one_is_parked(
    bootstrap: str, topic_prefix: str
) -> None:
    """An account connected while the service runs has every event since its connection
    (those made before the ingestor could know it included), a revoked one parks its two
    streams only, and every readable event lands exactly once with the right `account`."""
    scenario = sim_scenario(
        history_events=0, history_bursts=0, accounts=(EARLY, REVOKED), platform_share=0.5
    )
    async with SimServer(scenario, seed=73) as server:
        sim = server.sim
        loaded = make_config(
            server.url,
            bootstrap,
            topic_prefix,
            stripe__accounts="all",
            stripe__accounts_rescan_seconds=30,
        )
        stop = asyncio.Event()
        readiness = Readiness()
        # No --backfill: a stream found at start begins now, so only a start at the connection
        # time reads the late account's first events.
        run = asyncio.create_task(serve(loaded, stop=stop, readiness=readiness))
        try:
            await until(lambda: readiness.last_poll_ok_monotonic is not None, within=30)
            await asyncio.sleep(2)
            for account in (None, EARLY, REVOKED):
                sim.add_events(10, account=account, type="charge.succeeded")
                sim.add_events(3, account=account, api="v2")
            await wait_published(bootstrap, topic_prefix, {t["id"] for t in sim.truth()})
            sim.revoke_account(REVOKED)
            await until(
                lambda: {f"v1:{REVOKED}", f"v2:{REVOKED}"} <= set(readiness.parked), within=30
            )
            # ...and the rescan the deauthorization set off is done (it must not be the one
            # that finds the late account).
            await until(lambda: metric("ingestor_connected_accounts") == 1, within=30)
            # Its authorization shows in the platform's list 5 s late: found then, the
            # account must still be read from its connection.
            sim.connect_account(LATE, lag_seconds=5)
            late = set(sim.add_events(20, account=LATE, type="charge.succeeded"))
            late |= set(sim.add_events(5, account=LATE, api="v2"))
            unreadable = set(sim.add_events(10, account=REVOKED, type="charge.succeeded"))
            platform = set(sim.add_events(10, type="charge.updated"))
            expected = {t["id"] for t in sim.truth()} - unreadable
            records = await wait_published(bootstrap, topic_prefix, expected)
            assert set(readiness.parked) == {f"v1:{REVOKED}", f"v2:{REVOKED}"}
            assert not run.done()
        finally:
            stop.set()
        assert await asyncio.wait_for(run, 20) == 0
        truth = [t for t in sim.truth() if t["id"] not in unreadable]
    by_id = check_exactly_once(records, truth, topic_prefix)
    assert {headers(by_id[i]).get("account") for i in late} == {LATE}
    assert {headers(by_id[i]).get("account") for i in platform} == {None}
    assert not unreadable & {headers(r)["event_id"] for r in records}
