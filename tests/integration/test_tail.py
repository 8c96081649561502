"""`ingestor tail` reads <prefix>.* topics read_committed, skipping the state topic, and filters
and prints what the pipeline published."""

from __future__ import annotations

import asyncio
import fnmatch
import os
import re
import sys
import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ingestor import kafka_tail
from ingestor.clock import wall_ms
from ingestor.config import KafkaConfig
from ingestor.errors import KafkaUnavailable
from ingestor.events import ms_to_rfc3339
from ingestor.pipeline import serve
from ingestor.sim.server import SimServer
from tests.integration.harness import make_config, sim_scenario, wait_published

ROOT = Path(__file__).resolve().parents[2]


async def publish(bootstrap: str, prefix: str) -> None:
    """Two event topics (2 committed + 1 aborted record), a state record, a foreign topic."""
    state = KafkaConfig(topic_prefix=prefix).state_topic
    charge, dispute = f"{prefix}.charge.succeeded", f"{prefix}.charge.dispute.closed"
    other = f"{prefix}x.unrelated"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(t, num_partitions=2, replication_factor=1) for t in (charge, dispute)]
            + [NewTopic(t, num_partitions=1, replication_factor=1) for t in (state, other)]
        )
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"test-tail-{uuid.uuid4()}"
    )
    await producer.start()
    try:
        async with producer.transaction():
            headers = [("event_id", b"evt_1"), ("source", b"v1")]
            await producer.send_and_wait(charge, b'{"id":"evt_1"}', key=b"ch_1", headers=headers)
            await producer.send_and_wait(charge, b'{"id":"evt_2"}', key=b"ch_2")
            await producer.send_and_wait(dispute, b'{"id":"evt_3"}', key=b"dp_1")
            await producer.send_and_wait(state, b"cursor", key=b"v1:platform")
            await producer.send_and_wait(other, b"x", key=b"x")
        await producer.begin_transaction()
        await producer.send_and_wait(charge, b'{"id":"evt_aborted"}', key=b"ch_9")
        await producer.abort_transaction()
    finally:
        await producer.stop()


async def test_read_all_sees_committed_records_of_the_prefix_only(
    bootstrap: str, topic_prefix: str
) -> None:
    """Aborted records, the state topic and other prefixes never show up."""
    await publish(bootstrap, topic_prefix)
    seen: list[bytes] = []
    count = await kafka_tail.read_all(
        bootstrap, topic_prefix, lambda r: seen.append(kafka_tail.record_json(r)), max_seconds=30
    )
    docs = [orjson.loads(line) for line in seen]
    assert count == 3
    assert sorted(d["value"]["id"] for d in docs) == ["evt_1", "evt_2", "evt_3"]
    assert {d["topic"] for d in docs} == {
        f"{topic_prefix}.charge.succeeded",
        f"{topic_prefix}.charge.dispute.closed",
    }
    first = next(d for d in docs if d["key"] == "ch_1")
    assert first["headers"] == {"event_id": "evt_1", "source": "v1"}
    assert isinstance(first["offset"], int)
    assert isinstance(first["partition"], int)


async def test_empty_prefix_reads_nothing(bootstrap: str, topic_prefix: str) -> None:
    """A prefix with no topics returns 0 at once."""
    assert await kafka_tail.read_all(bootstrap, topic_prefix, lambda r: None, max_seconds=10) == 0


async def test_unreachable_broker_is_a_named_failure(topic_prefix: str) -> None:
    """No broker: KafkaUnavailable naming the address, within the time limit."""
    with pytest.raises(KafkaUnavailable, match=r"127\.0\.0\.1:1"):
        await kafka_tail.read_all("127.0.0.1:1", topic_prefix, lambda r: None, max_seconds=10)


async def test_cli_tail_summary_prints_a_per_topic_table(bootstrap: str, topic_prefix: str) -> None:
    """`ingestor tail --summary`: topic, count, sample key per topic and a total; exit 0."""
    await publish(bootstrap, topic_prefix)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "KAFKA_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ingestor",
        "tail",
        "--bootstrap",
        bootstrap,
        "--prefix",
        topic_prefix,
        "--summary",
        "--max-seconds",
        "30",
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    rows = [line.split() for line in out.decode().splitlines()]
    assert rows[0] == ["topic", "count", "sample_key"]
    table = {r[0]: r[1:] for r in rows[1:]}
    assert table[f"{topic_prefix}.charge.dispute.closed"] == ["1", "dp_1"]
    assert table[f"{topic_prefix}.charge.succeeded"][0] == "2"
    assert table["total"] == ["3"]


# --- the CLI on what the pipeline published ------------------------------------------------


async def tail_cli(bootstrap: str, prefix: str, *args: str) -> str:
    """`ingestor tail` as a subprocess with stdout piped; its output (exit 0 asserted)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "KAFKA_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ingestor",
        "tail",
        "--bootstrap",
        bootstrap,
        "--prefix",
        prefix,
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


ACCOUNTS = ("acct_1TailCliAlpha", "acct_1TailCliBravo")


async def test_cli_tail_filters_by_type_account_and_since_in_both_formats(
    bootstrap: str, topic_prefix: str
) -> None:
    """On events the pipeline published: piped output is JSON lines, `--format text` one
    readable line per event; `--types` keeps the matching types, `--account` one account's
    (or the platform's) events, `--since` only what was published after that time."""
    scenario = sim_scenario(history_events=240, v2_share=0.2, accounts=ACCOUNTS)
    async with SimServer(scenario, seed=13) as sim:
        loaded = make_config(sim.url, bootstrap, topic_prefix, stripe__accounts="all")
        assert await serve(loaded, backfill=True, once=True) == 0
        first = sim.sim.truth()
        await wait_published(bootstrap, topic_prefix, {t["id"] for t in first})
        await asyncio.sleep(1.5)  # Kafka timestamps are ms; keep the two runs well apart
        between = ms_to_rfc3339(wall_ms())
        await asyncio.sleep(1.5)
        later = sim.sim.add_events(7, type="charge.refunded", account=ACCOUNTS[1])
        later += sim.sim.add_events(4, type="customer.created")
        assert await serve(loaded, backfill=True, once=True) == 0
        truth = sim.sim.truth()
    await wait_published(bootstrap, topic_prefix, {t["id"] for t in truth})
    by_id = {t["id"]: t for t in truth}

    def ids_of_json(out: str) -> list[str]:
        docs = [orjson.loads(line) for line in out.splitlines()]
        return [d["headers"]["event_id"] for d in docs]

    everything = ids_of_json(await tail_cli(bootstrap, topic_prefix))
    assert sorted(everything) == sorted(by_id)

    charges = ids_of_json(await tail_cli(bootstrap, topic_prefix, "--types", "charge.*"))
    expected = sorted(i for i, t in by_id.items() if fnmatch.fnmatchcase(t["type"], "charge.*"))
    assert 0 < len(expected) < len(by_id)
    assert sorted(charges) == expected

    bravo = ids_of_json(await tail_cli(bootstrap, topic_prefix, "--account", ACCOUNTS[1]))
    expected = sorted(i for i, t in by_id.items() if t["account"] == ACCOUNTS[1])
    assert 0 < len(expected) < len(by_id)
    assert sorted(bravo) == expected
    platform = ids_of_json(await tail_cli(bootstrap, topic_prefix, "--account", "platform"))
    expected = sorted(i for i, t in by_id.items() if t["account"] is None)
    assert expected
    assert sorted(platform) == expected

    text = await tail_cli(bootstrap, topic_prefix, "--since", between, "--format", "text")
    lines = text.splitlines()
    assert len(lines) == len(later)
    rows = [re.split(r"\s{2,}", line) for line in lines]
    want = {
        (by_id[i]["type"], by_id[i]["object_id"], by_id[i]["account"] or "platform") for i in later
    }
    assert {(r[1], r[2], r[3]) for r in rows} == want
    for r in rows:
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", r[0]), r
        if r[1] == "charge.refunded":  # a charge shows its amount with currency and status
            assert re.fullmatch(r"\d+\.\d\d [A-Z]{3}", r[4]), r
            assert re.fullmatch(r"[a-z_]+", r[5]), r
    both = await tail_cli(
        bootstrap, topic_prefix, "--since", between, "--types", "customer.*", "--format", "json"
    )
    assert sorted(ids_of_json(both)) == sorted(
        i for i in later if by_id[i]["type"] == "customer.created"
    )


async def test_follow_starts_at_the_end_and_picks_up_new_topics(
    bootstrap: str, topic_prefix: str
) -> None:
    """`--follow`: records already there are not shown; new ones are, in an existing topic
    and in a topic created after the tail started; it returns after `limit` records."""
    await publish(bootstrap, topic_prefix)
    seen: list[str] = []
    follow = asyncio.create_task(
        kafka_tail.read_all(
            bootstrap,
            topic_prefix,
            lambda r: seen.append(r.value.decode()),
            max_seconds=40,
            start="end",
            follow=True,
            limit=2,
        )
    )
    await asyncio.sleep(1.5)  # let it take its start offsets
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{topic_prefix}.invoice.paid", 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(f"{topic_prefix}.charge.succeeded", b"new-1", key=b"ch_3")
        await producer.send_and_wait(f"{topic_prefix}.invoice.paid", b"new-2", key=b"in_1")
    finally:
        await producer.stop()
    assert await asyncio.wait_for(follow, 30) == 2
    assert sorted(seen) == ["new-1", "new-2"]
