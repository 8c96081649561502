"""examples/consumer.py end to end: the pipeline's real topics, read back by the example."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer

from examples.consumer import RecentIds, StripeEvent, consume, topic_pattern
from ingestor.pipeline import serve
from ingestor.sim.server import SimServer
from tests.integration.harness import make_config, sim_scenario, wait_published


async def _inject(bootstrap: str, topic: str, original: Any, prefix: str) -> None:
    """A committed repeat of a published record (same event_id header) and an aborted record."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"test-consumer-{uuid.uuid4()}"
    )
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(
                topic, original.value, key=original.key, headers=list(original.headers)
            )
        await producer.begin_transaction()
        aborted = b'{"id":"evt_aborted","type":"charge.succeeded","data":{"object":{}}}'
        await producer.send_and_wait(
            f"{prefix}.charge.succeeded",
            aborted,
            key=b"ch_aborted",
            headers=[("event_id", b"evt_aborted"), ("source", b"v1")],
        )
        await producer.abort_transaction()
    finally:
        await producer.stop()


async def test_example_consumer_sees_every_event_once_in_both_shapes_and_resumes(
    bootstrap: str, topic_prefix: str
) -> None:
    """After a backfill, the example (read_committed, a consumer group) handles every event of
    the simulator's truth once: v1 values and hydrated v2 envelopes alike; a repeated record is
    skipped by event id, an aborted one never shows; the same group started again resumes at
    its committed offsets and handles nothing twice."""
    scenario = sim_scenario(history_events=400, v2_share=0.25)
    async with SimServer(scenario, seed=21) as sim:
        loaded = make_config(
            sim.url, bootstrap, topic_prefix, stripe__accounts="all", kafka__firehose=True
        )
        assert await serve(loaded, backfill=True, once=True) == 0
        truth = {t["id"]: t for t in sim.sim.truth()}
    records = await wait_published(bootstrap, topic_prefix, set(truth))
    typed = [r for r in records if not r.topic.endswith((".all", ".dlq"))]
    await _inject(bootstrap, typed[0].topic, typed[0], topic_prefix)

    seen: list[StripeEvent] = []

    async def handle(event: StripeEvent) -> None:
        seen.append(event)

    group = f"{topic_prefix}-example"
    async with asyncio.timeout(90):
        counts = await consume(bootstrap, topic_prefix, group, handle, idle_seconds=4)
    ids = [e.id for e in seen]
    assert len(ids) == len(set(ids))
    assert set(ids) == set(truth)
    assert counts.handled == len(truth)
    assert counts.repeats == 1
    assert all(not e.topic.endswith((".all", ".dlq", "._ingestor_state")) for e in seen)
    for e in seen:
        t = truth[e.id]
        assert (e.api, e.type, e.account) == (t["api"], t["type"], t["account"])
        if e.api == "v1":
            assert e.hydration is None
            assert e.object is not None
            assert e.object["id"] == t["object_id"]
        else:
            assert e.hydration in ("ok", "not_found")
            if e.hydration == "ok":
                assert e.object is not None
                assert e.object["id"] == t["object_id"]
    assert {e.api for e in seen} == {"v1", "v2"}

    again: list[StripeEvent] = []

    async def handle_again(event: StripeEvent) -> None:
        again.append(event)

    async with asyncio.timeout(60):
        counts = await consume(bootstrap, topic_prefix, group, handle_again, idle_seconds=3)
    assert again == []
    assert counts.handled == counts.repeats == 0


def test_topic_pattern_leaves_out_the_dlq_the_firehose_and_the_state_topic() -> None:
    """The subscription takes every type topic of the prefix and nothing of the service's."""
    pattern = re.compile(topic_pattern("stripe"))
    for topic in (
        "stripe.charge.succeeded",
        "stripe.v2.core.account.created",
        "stripe.all-1a2b3c4d",
    ):
        assert pattern.match(topic), topic
    for topic in (
        "stripe.dlq",
        "stripe.all",
        "stripe._ingestor_state",
        "stripex.charge",
        "other.a",
    ):
        assert not pattern.match(topic), topic


def test_recent_ids_forgets_the_oldest_beyond_its_capacity() -> None:
    """A repeat within the window is caught; memory stays at `capacity` ids."""
    recent = RecentIds(capacity=2)
    assert recent.first_time("evt_1")
    assert not recent.first_time("evt_1")
    assert recent.first_time("evt_2")
    assert recent.first_time("evt_3")  # evt_1, the oldest, is forgotten
    assert not recent.first_time("evt_3")
    assert recent.first_time("evt_1")
