"""Simulator webhooks: signed pushes of newly visible events, backoff retries, seeded faults."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import orjson
import pytest

from ingestor import clock
from ingestor.clock import LoopClock
from ingestor.errors import ClosedError
from ingestor.signature import SignatureVerifier
from ingestor.sim import SimServer, Simulator, load_scenario
from ingestor.sim.scenario import Destination, Scenario, destination_from_mapping
from ingestor.sim.webhooks import WebhookDeliverer, signature_header
from ingestor.webhook import Ack, Delivery, WebhookServer

SECRET = "whsec_simDeliverer0123456789"
START = 1_780_000_000


def scenario(**changes: object) -> Scenario:
    base = dataclasses.replace(
        load_scenario(None), history_events=30, history_bursts=0, start_time=0.0
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]  # test knobs


def destination(**changes: object) -> Destination:
    values: dict[str, object] = {
        "url": "http://127.0.0.1:9/hooks",
        "secret": SECRET,
        "backoff_initial_seconds": 0.05,
        "backoff_max_seconds": 1.0,
        "timeout_seconds": 2.0,
    }
    values.update(changes)
    return destination_from_mapping(values)


class Recorder:
    """A `send` seam: records each attempt, answers from a list of statuses (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.calls: list[tuple[str, bytes, dict[str, str], float]] = []

    async def __call__(self, dest: Destination, body: bytes, headers: Mapping[str, str]) -> int:
        self.calls.append((dest.url, body, dict(headers), clock.monotonic()))
        return self.statuses.pop(0) if self.statuses else 200


# --- bodies, kinds and signatures -------------------------------------------------------------


async def test_each_kind_gets_its_events_as_the_list_serves_them_signed() -> None:
    """A snapshot destination gets each new v1 event as the exact bytes the v1 list serves, a
    thin one each new v2 event as a v2.core.event notification; history is not pushed; each
    body carries a signature the ingestor's verifier accepts."""
    sim = Simulator(scenario(), seed=5)
    recorder = Recorder()
    snap = destination(url="http://snap/hooks", kind="snapshot")
    thin = destination(url="http://thin/hooks", kind="thin")
    async with WebhookDeliverer(sim, (snap, thin), send=recorder, poll_interval_seconds=0.01) as d:
        v1_ids = sim.add_events(3, api="v1")
        v2_ids = sim.add_events(2, api="v2", account="acct_1SimConnectAlpha01")
        async with asyncio.timeout(10):
            await d.idle()
    by_url: dict[str, list[bytes]] = {}
    verifier = SignatureVerifier([SECRET], tolerance_seconds=300)
    for url, body, headers, _ in recorder.calls:
        by_url.setdefault(url, []).append(body)
        verifier.verify(body, headers["Stripe-Signature"])
    snap_bodies = by_url["http://snap/hooks"]
    assert [orjson.loads(b)["id"] for b in snap_bodies] == v1_ids
    for body, event_id in zip(snap_bodies, v1_ids, strict=True):
        serial = sim.views.find_event(event_id)
        assert serial is not None
        assert body == sim.views.v1_event(serial)
    notes = [orjson.loads(b) for b in by_url["http://thin/hooks"]]
    assert [n["id"] for n in notes] == v2_ids
    for note in notes:
        assert note["object"] == "v2.core.event"
        assert note["context"] == "acct_1SimConnectAlpha01"
        assert {"id", "type", "created", "livemode"} <= set(note)
        assert "data" not in note
    assert d.stats[0].acked_ids == set(v1_ids)
    assert d.counters()[1]["acked_events"] == 2


def test_signature_header_is_hmac_sha256_of_timestamp_dot_body() -> None:
    """The simulator's signer produces what an independent HMAC-SHA256 of "<t>.<body>" gives
    (the known-answer below was computed with Python's hmac, outside the simulator)."""
    header = signature_header(b'{"a":1}', "whsec_k", 1700000000)
    assert header == (
        "t=1700000000,v1=a252a4340d8bbbdbac8643a2812cc7d628ad79bfba544bff054ac2fa10f795a2"
    )
    SignatureVerifier(["whsec_k"], tolerance_seconds=None).verify(b'{"a":1}', header)


# --- retries ----------------------------------------------------------------------------------


@pytest.mark.looptime
async def test_retries_back_off_exponentially_and_give_up_at_max_attempts() -> None:
    """A destination failing every attempt is tried max_attempts times, each gap
    backoff_initial * 2^(n-1) (capped at backoff_max) times a jitter in [0.5, 1], then given
    up; each retry is signed afresh with the time of sending."""
    with clock.use(LoopClock(START * 1000)):
        sim = Simulator(scenario(), seed=9)
        recorder = Recorder([500] * 100)
        dest = destination(max_attempts=6, backoff_initial_seconds=1.0, backoff_max_seconds=5.0)
        async with WebhookDeliverer(sim, (dest,), send=recorder, poll_interval_seconds=0.5) as d:
            [event_id] = sim.add_events(1, api="v1")
            async with asyncio.timeout(120):
                await d.idle()
    times = [call[3] for call in recorder.calls]
    assert len(times) == 6
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for n, gap in enumerate(gaps, start=1):
        nominal = min(1.0 * 2 ** (n - 1), 5.0)
        assert 0.5 * nominal - 1e-6 <= gap <= nominal + 1e-6
    stamps = [call[2]["Stripe-Signature"].split(",")[0] for call in recorder.calls]
    assert len(set(stamps)) == len(stamps)  # re-signed at each attempt
    stats = d.stats[0]
    assert (stats.attempts, stats.failed, stats.gave_up, stats.acked) == (6, 6, 1, 0)
    assert stats.given_up_ids == {event_id}
    assert stats.statuses == {"500": 6}


async def test_retries_against_a_receiver_that_fails_the_first_n_times() -> None:
    """Against the real webhook receiver whose intake answers UNAVAILABLE (503) three times,
    the deliverer retries until the fourth attempt is committed (200), over real HTTP; the
    receiver verified every attempt's signature."""
    answers = [Ack.UNAVAILABLE] * 3
    seen: list[Delivery] = []

    async def intake(delivery: Delivery) -> Ack:
        seen.append(delivery)
        return answers.pop(0) if answers else Ack.COMMITTED

    sim = Simulator(scenario(), seed=11)
    async with WebhookServer(
        intake,
        host="127.0.0.1",
        port=0,
        secrets=[SECRET],
        tolerance_seconds=300,
        max_body_bytes=1 << 20,
    ) as receiver:
        dest = destination(url=receiver.url, backoff_initial_seconds=0.02)
        async with WebhookDeliverer(sim, (dest,), poll_interval_seconds=0.01) as d:
            [event_id] = sim.add_events(1, api="v1")
            async with asyncio.timeout(20):
                await d.idle()
    assert [s.id for s in seen] == [event_id] * 4
    stats = d.stats[0]
    assert stats.statuses == {"503": 3, "200": 1}
    assert (stats.attempts, stats.retries, stats.acked, stats.gave_up) == (4, 3, 1, 0)


async def test_unreachable_destination_counts_connection_failures() -> None:
    """A destination nobody listens on is a 'connection' failure per attempt, then given up."""
    sim = Simulator(scenario(), seed=12)
    dest = destination(url="http://127.0.0.1:9/hooks", max_attempts=2, backoff_initial_seconds=0.01)
    async with WebhookDeliverer(sim, (dest,), poll_interval_seconds=0.01) as d:
        sim.add_events(1, api="v1")
        async with asyncio.timeout(20):
            await d.idle()
    assert d.stats[0].statuses == {"connection": 2}
    assert d.stats[0].gave_up == 1


# --- seeded faults ----------------------------------------------------------------------------


async def run_faulty(seed: int) -> tuple[list[str], list[str], WebhookDeliverer]:
    with clock.use(LoopClock(START * 1000)):
        sim = Simulator(scenario(), seed=seed)
        recorder = Recorder()
        dest = destination(
            duplicate_share=0.3,
            duplicate_window_seconds=3.0,
            reorder_share=0.3,
            reorder_window_seconds=2.0,
            late_share=0.1,
            late_min_seconds=5.0,
            late_max_seconds=10.0,
        )
        async with WebhookDeliverer(sim, (dest,), send=recorder, poll_interval_seconds=0.1) as d:
            ids = sim.add_events(40, api="v1")
            async with asyncio.timeout(300):
                await d.idle()
    arrived = [orjson.loads(call[1])["id"] for call in recorder.calls]
    return ids, arrived, d


@pytest.mark.looptime
async def test_seeded_duplicates_reordering_and_lateness() -> None:
    """With duplicate, reorder and late shares, every event still arrives, some twice and
    some out of visibility order; the same seed gives the same arrival sequence, another
    seed a different one."""
    ids, arrived, d = await run_faulty(seed=21)
    assert set(arrived) == set(ids)
    stats = d.stats[0]
    assert stats.duplicates > 0
    assert len(arrived) == len(ids) + stats.duplicates
    assert arrived != sorted(arrived, key=ids.index)  # overtaken somewhere
    assert stats.delayed > 0
    assert stats.acked_ids == set(ids)
    again_ids, again, _ = await run_faulty(seed=21)
    assert (again_ids, again) == (ids, arrived)
    other_ids, other, _ = await run_faulty(seed=22)
    assert [other_ids.index(i) for i in other] != [ids.index(i) for i in arrived]


# --- scenario and control API -----------------------------------------------------------------


def test_scenario_webhooks_table_parses_and_rejects_bad_entries(tmp_path: Path) -> None:
    """`[[webhooks]]` tables become Destinations; unknown keys, a bad kind or a blank secret
    are errors whose message never shows the secret."""
    path = tmp_path / "hooks.toml"
    path.write_text(
        '[[webhooks]]\nurl = "http://127.0.0.1:8081/webhooks/stripe"\n'
        'secret = "whsec_fromScenario"\nkind = "thin"\nduplicate_share = 0.5\n'
    )
    [dest] = load_scenario(path).webhooks
    assert (dest.kind, dest.duplicate_share, dest.secret) == ("thin", 0.5, "whsec_fromScenario")
    assert "whsec_fromScenario" not in repr(dest)
    with pytest.raises(ValueError, match="unknown keys"):
        destination(colour="blue")
    with pytest.raises(ValueError, match="kind") as err:
        destination(kind="full", secret="whsec_hidden")
    assert "whsec_hidden" not in str(err.value)
    with pytest.raises(ValueError, match="secret"):
        destination(secret="  ")


async def test_control_api_adds_destinations_and_shows_counters() -> None:
    """POST /_sim/webhooks adds a destination that starts receiving; GET /_sim/webhooks shows
    its attempts and acks and never its secret; a bad destination is a 400."""
    received: list[Delivery] = []
    three = asyncio.Event()

    async def intake(delivery: Delivery) -> Ack:
        received.append(delivery)
        if len(received) >= 3:
            three.set()
        return Ack.COMMITTED

    async with (
        WebhookServer(
            intake,
            host="127.0.0.1",
            port=0,
            secrets=[SECRET],
            tolerance_seconds=300,
            max_body_bytes=1 << 20,
        ) as receiver,
        SimServer(scenario(), seed=4) as server,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(
            f"{server.url}/_sim/webhooks", json={"url": receiver.url, "secret": SECRET}
        ) as r:
            assert r.status == 200
            assert (await r.json())["index"] == 0
        async with http.post(f"{server.url}/_sim/webhooks", json={"url": "ftp://x"}) as r:
            assert r.status == 400
        async with http.post(f"{server.url}/_sim/events", json={"count": 3}) as r:
            ids = (await r.json())["ids"]
        async with asyncio.timeout(20):
            await three.wait()
        async with http.get(f"{server.url}/_sim/webhooks") as r:
            text = await r.text()
        body = orjson.loads(text)
    assert sorted(d.id for d in received) == sorted(ids)
    [counters] = body["destinations"]
    assert (counters["acked"], counters["acked_events"], counters["kind"]) == (3, 3, "snapshot")
    assert counters["statuses"] == {"200": 3}
    assert SECRET not in text


async def test_sim_server_pushes_to_a_url_given_in_the_scenario() -> None:
    """A SimServer whose scenario names a destination pushes new events there from start-up,
    with no call to the control API."""
    received: list[str] = []
    two = asyncio.Event()

    async def intake(delivery: Delivery) -> Ack:
        received.append(delivery.id)
        if len(received) >= 2:
            two.set()
        return Ack.COMMITTED

    async with WebhookServer(
        intake,
        host="127.0.0.1",
        port=0,
        secrets=[SECRET],
        tolerance_seconds=300,
        max_body_bytes=1 << 20,
    ) as receiver:
        hooks = (destination(url=receiver.url, kind="thin"),)
        async with SimServer(scenario(webhooks=hooks), seed=6) as server:
            ids = server.sim.add_events(2, api="v2")
            async with asyncio.timeout(20):
                await two.wait()
    assert sorted(received) == sorted(ids)


@pytest.mark.looptime
async def test_deliverer_drives_the_receiver_in_process_under_simulated_time() -> None:
    """With the deliverer's send seam calling WebhookServer.receive (no sockets, no server
    started), signatures made and checked on the simulated clock verify, and events pushed
    while the intake is unavailable (503) all land once it recovers 20 simulated s later."""
    with clock.use(LoopClock(START * 1000)):
        committed: set[str] = set()
        recover_at = clock.monotonic() + 20.0

        async def intake(delivery: Delivery) -> Ack:
            if clock.monotonic() < recover_at:
                return Ack.UNAVAILABLE
            committed.add(delivery.id)
            return Ack.COMMITTED

        receiver = WebhookServer(
            intake,
            host="127.0.0.1",
            port=0,
            secrets=[SECRET],
            tolerance_seconds=300,
            max_body_bytes=1 << 20,
        )

        async def send(dest: Destination, body: bytes, headers: Mapping[str, str]) -> int:
            answer = await receiver.receive(body, headers["Stripe-Signature"])
            assert not answer.rejected, answer
            return answer.status

        sim = Simulator(scenario(), seed=31)
        dest = destination(backoff_initial_seconds=1.0, backoff_max_seconds=8.0, max_attempts=10)
        async with WebhookDeliverer(sim, (dest,), send=send, poll_interval_seconds=0.1) as d:
            ids = sim.add_events(5, api="v1")
            async with asyncio.timeout(600):
                await d.idle()
    assert committed == set(ids)
    stats = d.stats[0]
    assert stats.statuses["503"] >= 5
    assert stats.statuses["200"] == 5
    assert stats.gave_up == 0


async def test_deliverer_closes_twice_and_refuses_reuse() -> None:
    """Closing a deliverer twice is safe; starting it after close is refused."""
    d = WebhookDeliverer(Simulator(scenario(), seed=1), (destination(),), send=Recorder())
    async with d:
        pass
    await d.close()
    with pytest.raises(ClosedError):
        await d.start()
