"""bench.run.drop_bench_topics: each benchmark stage starts on a broker without the topics
earlier stages and runs made, and leaves every other topic alone."""

from __future__ import annotations

import uuid

import anyio
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.run import BENCH_TOPIC, drop_bench_topics


def test_bench_topic_pattern_matches_only_the_benchmarks_names() -> None:
    """bench<kind><8 hex> and topics under it match; a user's topic named bench... does not."""
    for name in (
        "benchsmall_backfill0a1b2c3d.charge.succeeded",
        "benchsmall_backfill0a1b2c3d._ingestor_state",
        "benchmin0a1b2c3d",
        "bench0a1b2c3d.dlq",
    ):
        assert BENCH_TOPIC.match(name), name
    for name in ("benchmarks.results", "bench", "ingestor.charge.succeeded", "xbench0a1b2c3d"):
        assert not BENCH_TOPIC.match(name), name


async def test_drop_bench_topics_deletes_the_benchmarks_topics_only(
    bootstrap: str, topic_prefix: str
) -> None:
    """The benchmark's topics are gone when it returns; the test's own topic is still there."""
    run = uuid.uuid4().hex[:8]
    ours = [f"benchtest{run}.charge.succeeded", f"benchtest{run}._ingestor_state", f"benchmin{run}"]
    keep = f"{topic_prefix}.charge.succeeded"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 1, 1) for n in [*ours, keep]])
        # The broker answers CreateTopics before its metadata lists them (CI's first run found
        # none): drop_bench_topics deletes what is listed, so wait for the listing. The broker
        # offers nothing to wait on but its metadata.
        with anyio.fail_after(30):
            while not set(ours) <= set(await admin.list_topics()):  # noqa: ASYNC110 - the broker's metadata
                await anyio.sleep(0.05)
        assert await drop_bench_topics(bootstrap) >= len(ours)
        left = set(await admin.list_topics())
    finally:
        await admin.close()
    assert not left & set(ours)
    assert keep in left
