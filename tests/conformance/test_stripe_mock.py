"""stripe-mock, Stripe's own OpenAPI mock server, as an external conformance server for the
v1 client: `check`, `run --backfill --once`, a live tail, and the client's reads.

stripe-mock answers every list with the same fixture event (created 1234567890, i.e.
2009-02-13) whatever the `created` filters say, and has no /v2/core/events: so v2 stays off.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conformance.conftest import StripeMock
from tests.integration.harness import Proc, check_output, headers, published, start

# stripe-mock accepts "any valid looking testmode secret API key": no underscore after sk_test_.
KEY = "sk_test_stripemock0123456789"

# The one event stripe-mock's fixtures have, and its created time (unix seconds).
FIXTURE_EVENT = "evt_1Pgc76B7WZ01zgkWwyRHS12y"
FIXTURE_CREATED = 1234567890


@pytest.fixture
async def procs() -> AsyncIterator[list[Proc]]:
    """Processes a test started; any still running at the end are killed."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        for p in started:
            p.kill()
            await p.proc.wait()


def anomaly_warnings(p: Proc) -> list[dict[str, object]]:
    return [d for d in check_output(p) if d.get("event") == "event outside the requested range"]


@pytest.mark.timeout(120)
async def test_backfill_once_never_publishes_the_event_no_read_asked_for(
    bootstrap: str, topic_prefix: str, tmp_path: Path, stripe_mock: StripeMock, procs: list[Proc]
) -> None:
    """`run --backfill --once` (v2 off) exits 0 and publishes stripe-mock's event 0 times: it
    was created in 2009, before every range a read asked for (the backfill starts at most 30
    days back, the tail at its start), so no read is responsible for it and each one drops it.
    Each stream (platform and the one connected account stripe-mock lists) warns once, naming
    the event, its created time and the requested range."""
    p = await start(
        stripe_mock.url,
        bootstrap,
        topic_prefix,
        tmp_path,
        "--backfill",
        "--since",
        "2d",
        "--once",
        key=KEY,
        stripe__v2="false",
    )
    procs.append(p)
    assert await p.wait(90) == 0, p.lines()[-10:]
    records = await published(bootstrap, topic_prefix)
    counts = Counter(headers(r)["event_id"] for r in records)
    assert counts == Counter(), f"published {dict(counts)}"
    warnings = anomaly_warnings(p)
    assert sorted(str(w["stream"]) for w in warnings) == sorted(
        ["v1:platform", "v1:acct_1PgafTB7WZ01zgkW"]
    )
    for w in warnings:
        assert w["event_id"] == FIXTURE_EVENT
        assert w["created"] == FIXTURE_CREATED
        assert isinstance(w["requested_gte"], int)
        assert w["requested_gte"] > FIXTURE_CREATED
