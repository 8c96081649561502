"""stripe-mock, Stripe's own OpenAPI mock server, as an external conformance server for the
v1 client: `check`, `run --backfill --once`, a live tail, and the client's reads.

stripe-mock answers every list with the same fixture event (created 1234567890, i.e.
2009-02-13) whatever the `created` filters say, and has no /v2/core/events: so v2 stays off.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from ingestor.config import Secret, StripeConfig
from ingestor.metrics import REGISTRY
from ingestor.pages import fetch_object, v1_pages
from ingestor.stripe_api import StripeClient
from tests.conformance.conftest import ROOT, StripeMock
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


def v1_list_requests(mock: StripeMock) -> int:
    return mock.log.read_text(errors="replace").count("Request: GET /v1/events")


@pytest.mark.timeout(120)
async def test_live_tail_then_sigterm_exits_0_publishes_nothing_twice_and_does_not_spin(
    bootstrap: str, topic_prefix: str, tmp_path: Path, stripe_mock: StripeMock, procs: list[Proc]
) -> None:
    """`run` (live tail, v2 off) against stripe-mock for 4 s, then SIGTERM: exits 0 and has
    published nothing twice (nothing at all: the fixture event is older than the tail start,
    the start of every range it reads). The same old event on every answer does not make it
    spin: /v1/events requests stay within the poll and sweep cadence (0.2 s and 1 s per
    stream), far below the 400 requests/s the rate budget would allow."""
    before = v1_list_requests(stripe_mock)
    p = await start(stripe_mock.url, bootstrap, topic_prefix, tmp_path, key=KEY, stripe__v2="false")
    procs.append(p)
    started = time.monotonic()
    await asyncio.sleep(4)
    assert p.proc.returncode is None, p.lines()[-10:]
    p.proc.send_signal(signal.SIGTERM)
    assert await p.wait(15) == 0, p.lines()[-10:]
    elapsed = time.monotonic() - started
    requests = v1_list_requests(stripe_mock) - before
    streams = 2  # the platform and stripe-mock's one connected account
    assert 0 < requests <= streams * elapsed * (1 / 0.2 + 1 / 1.0) * 1.5 + 10, requests
    records = await published(bootstrap, topic_prefix)
    counts = Counter(headers(r)["event_id"] for r in records)
    assert not [i for i, n in counts.items() if n > 1]
    assert counts == Counter(), f"published {dict(counts)}"
    assert len(anomaly_warnings(p)) == streams  # once per stream, however many polls


def check_env(mock: StripeMock, bootstrap: str, prefix: str, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "INGESTOR_"))}
    env.update(
        STRIPE_API_KEY=KEY,
        STRIPE_API_BASE=mock.url,
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        INGESTOR_TOPIC_PREFIX=prefix,
        **more,
    )
    return env


async def run_check(env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(ROOT / ".venv" / "bin" / "python"),
        "-m",
        "ingestor",
        "check",
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.mark.timeout(120)
async def test_check_passes_with_v1_and_names_the_missing_v2_endpoint(
    bootstrap: str, topic_prefix: str, stripe_mock: StripeMock
) -> None:
    """`ingestor check` with v2 off passes against stripe-mock (key and account from
    /v1/account, /v1/events readable, Kafka fine). With v2 on it fails, naming exactly what
    stripe-mock cannot answer: /v2/core/events is a 404 there. The key never shows."""
    code, out = await run_check(
        check_env(stripe_mock, bootstrap, topic_prefix, INGESTOR_STRIPE__V2="false")
    )
    assert code == 0, out
    lines = out.splitlines()
    assert any(line.startswith("OK") and "stripe key" in line and "acct_" in line for line in lines)
    assert any(
        line.startswith("OK") and "stripe v1 events" in line and FIXTURE_EVENT in line
        for line in lines
    ), out
    assert "v2" not in out
    assert lines[-1] == "all checks passed"
    assert KEY not in out

    code, out = await run_check(check_env(stripe_mock, bootstrap, topic_prefix))
    assert code == 1, out
    (v2_line,) = [line for line in out.splitlines() if line[6:].startswith("stripe v2 events")]
    assert v2_line.startswith("FAIL")
    assert "/v2/core/events" in v2_line
    assert "404" in v2_line
    assert out.splitlines()[-1] == "check failed: stripe v2 events"
    assert KEY not in out


@pytest.fixture
async def client(stripe_mock: StripeMock) -> AsyncIterator[StripeClient]:
    cfg = StripeConfig(api_key=Secret(KEY), api_base=stripe_mock.url, max_retries=0)
    async with StripeClient(cfg) as c:
        yield c


async def test_client_reads_and_decodes_stripe_mock_events_and_fetches_a_charge(
    client: StripeClient, stripe_mock: StripeMock
) -> None:
    """`StripeClient` + `v1_pages` decode stripe-mock's /v1/events: id, type, created, object
    id, and raw bytes equal to the event in the list as the server sent it. With a created
    range the server ignores, the event is dropped and counted as out_of_range. `fetch_object`
    reads `GET /v1/charges/{id}`."""
    pages = [p async for p in v1_pages(client, account=None, limit=10)]
    assert len(pages) == 1
    (page,) = pages
    assert not page.has_more
    assert page.cursor is None
    assert page.request_id  # stripe-mock sends a Request-Id header
    (event,) = page.events
    assert (event.id, event.type, event.api) == (FIXTURE_EVENT, "plan.created", "v1")
    assert event.created_ms == FIXTURE_CREATED * 1000
    assert event.account is None
    assert event.api_version is None  # stripe-mock's fixture has "api_version": null
    assert event.raw is not None
    headers_ = {"Authorization": f"Bearer {KEY}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{stripe_mock.url}/v1/events", headers=headers_) as resp,
    ):
        listed = orjson.loads(await resp.read())["data"][0]
    assert orjson.loads(event.raw) == listed
    assert event.object_id == listed["data"]["object"]["id"]

    labels = {"stream": "v1:platform", "kind": "out_of_range"}
    before = REGISTRY.get_sample_value("ingestor_api_anomalies_total", labels) or 0.0
    now = int(time.time())
    ranged = [p async for p in v1_pages(client, account=None, created_gte=now - 3600)]
    assert [p.events for p in ranged] == [[]]
    assert REGISTRY.get_sample_value("ingestor_api_anomalies_total", labels) == before + 1

    charge = await fetch_object(client, "/v1/charges/ch_conformance1", account=None, api="v1")
    assert charge["id"] == "ch_conformance1"
    assert charge["object"] == "charge"
    assert isinstance(charge["amount"], int)
