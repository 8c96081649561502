"""kafka.topic_partitions / topic_replication = 0: topics take the broker's own defaults
(num.partitions, default.replication.factor, read with DescribeConfigs)."""

from __future__ import annotations

from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from ingestor.config import KafkaConfig
from ingestor.log.kafka_admin import TopicAdmin, broker_topic_defaults

ROOT = Path(__file__).resolve().parents[2]


def dev_broker_settings() -> dict[str, str]:
    """dev/kafka/server.properties, which the broker the tests use was started from."""
    lines = (ROOT / "dev" / "kafka" / "server.properties").read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


async def partition_counts(bootstrap: str, names: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    return {d["topic"]: len(d["partitions"]) for d in described}


async def test_broker_defaults_are_read_from_the_broker(bootstrap: str) -> None:
    """DescribeConfigs returns the values the dev broker was configured with."""
    settings = dev_broker_settings()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        defaults = await broker_topic_defaults(admin)
    finally:
        await admin.close()
    assert defaults == (
        int(settings["num.partitions"]),
        int(settings["default.replication.factor"]),
    )


async def test_topics_get_the_broker_default_unless_set(bootstrap: str, topic_prefix: str) -> None:
    """Partitions 0 -> the broker's num.partitions; 4 -> 4; the state topic keeps its own
    count either way; replication 0 is accepted by the broker (resolved to its default)."""
    broker_default = int(dev_broker_settings()["num.partitions"])
    default = KafkaConfig(topic_prefix=topic_prefix)
    explicit = KafkaConfig(topic_prefix=topic_prefix, topic_partitions=4, topic_replication=1)
    names = [f"{topic_prefix}.charge.succeeded", f"{topic_prefix}.customer.created"]
    for cfg, name in ((default, names[0]), (explicit, names[1])):
        admin = TopicAdmin(cfg, {"bootstrap_servers": bootstrap}, "test-topic-defaults")
        try:
            await admin.create([name] + ([cfg.state_topic] if cfg is default else []))
        finally:
            await admin.close()
    counts = await partition_counts(bootstrap, [*names, default.state_topic])
    assert counts == {names[0]: broker_default, names[1]: 4, default.state_topic: 1}
    assert broker_default != 4  # the two cases are told apart
