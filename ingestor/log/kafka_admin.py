"""Kafka topic admin: creates the topics a batch needs, with the partitions and configs we own."""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from ingestor.config import BROKER_DEFAULT, KafkaConfig
from ingestor.errors import IngestorError, KafkaUnavailable

log = structlog.get_logger("ingestor.sink")

# Topics we create accept a little more than max_message_bytes: a batch holding one maximal
# record carries a 61-byte batch header, and compression can grow incompressible data slightly.
TOPIC_SIZE_SLACK = 16 * 1024
_DEFAULT_KEYS = ("num.partitions", "default.replication.factor")


async def broker_topic_defaults(admin: AIOKafkaAdminClient) -> tuple[int, int]:
    """The cluster's `num.partitions` and `default.replication.factor`, by DescribeConfigs.

    What a CreateTopics request with -1 for both would apply (KIP-464); aiokafka 0.14 cannot
    send that: it speaks CreateTopics v0-v3 only (-1 needs v4) and its NewTopic refuses -1
    without a replica assignment. Read from the controller the metadata names (any broker
    when none), whose values apply to the topics it creates. Raises KafkaUnavailable.
    """
    try:
        cluster = await admin.describe_cluster()
        ids = sorted(b["node_id"] for b in cluster["brokers"])
        broker = cluster.get("controller_id")
        if broker not in ids:
            broker = ids[0]
        wanted = ConfigResource(
            ConfigResourceType.BROKER, str(broker), dict.fromkeys(_DEFAULT_KEYS)
        )
        [response] = await admin.describe_configs([wanted])
    except (KafkaError, OSError, IndexError, ValueError) as exc:
        raise KafkaUnavailable(f"cannot read the broker's topic defaults: {exc!r}") from exc
    values: dict[str, str] = {}
    for resource in response.to_object()["resources"]:
        if resource["error_code"]:
            error = for_code(resource["error_code"]).__name__
            raise KafkaUnavailable(f"cannot read the broker's topic defaults: {error}")
        for entry in resource["config_entries"]:
            values[entry["config_names"]] = entry["config_value"]
    try:
        return int(values["num.partitions"]), int(values["default.replication.factor"])
    except (KeyError, ValueError) as exc:
        raise KafkaUnavailable(f"broker {broker} did not report {_DEFAULT_KEYS}") from exc


class TopicAdmin:
    """Creates topics through one lazily started admin client.

    The state topic is created compacted with one partition per shard (``shards``); every other
    topic (the DLQ included) gets ``topic_partitions``; every topic ``topic_replication``
    replicas. Either at 0 (BROKER_DEFAULT) takes the broker's default, read once. A topic that
    already exists is fine (another process may have made it); its settings are left alone.
    """

    def __init__(self, config: KafkaConfig, client_kwargs: dict[str, Any], client_id: str) -> None:
        self._config = config
        self._kwargs = client_kwargs
        self._client_id = client_id
        self._admin: AIOKafkaAdminClient | None = None
        self._defaults: tuple[int, int] | None = None

    async def create(self, names: list[str]) -> list[str]:
        """Creates `names`; returns those this call created (not those that already existed).
        Raises KafkaUnavailable (retriable) or IngestorError (not)."""
        admin = await self._ready()
        c = self._config
        if self._defaults is None and BROKER_DEFAULT in (c.topic_partitions, c.topic_replication):
            self._defaults = await broker_topic_defaults(admin)
            log.info(
                "broker topic defaults read",
                num_partitions=self._defaults[0],
                replication_factor=self._defaults[1],
            )
        response = await admin.create_topics([self.new_topic(name) for name in names])
        created: list[str] = []
        for entry in response.topic_errors:
            name, code = entry[0], entry[1]
            message = entry[2] if len(entry) > 2 else None
            if code == 0:
                log.info("topic created", topic=name)
                created.append(name)
                continue
            error = for_code(code)
            if error is TopicAlreadyExistsError:
                continue
            detail = f"cannot create topic {name!r}: {error.__name__}: {message or ''}".strip()
            if error.retriable:
                raise KafkaUnavailable(detail)
            # Bad name, replication above the broker count, policy: retrying cannot help.
            raise IngestorError(detail)
        return created

    async def partition_count(self, name: str) -> int:
        """How many partitions the existing topic `name` has (KafkaError when it fails)."""
        admin = await self._ready()
        [described] = await admin.describe_topics([name])
        if described["error_code"]:
            raise for_code(described["error_code"])(f"describing {name!r}")
        return len(described["partitions"])

    def new_topic(self, name: str) -> NewTopic:
        """The request for `name`; the broker's defaults must be known when the config asks
        for them (create() reads them first)."""
        c = self._config
        partitions, replication = c.topic_partitions, c.topic_replication
        if BROKER_DEFAULT in (partitions, replication):
            if self._defaults is None:
                raise AssertionError("new_topic before the broker's defaults were read")
            partitions = partitions or self._defaults[0]
            replication = replication or self._defaults[1]
        configs = {"max.message.bytes": str(c.max_message_bytes + TOPIC_SIZE_SLACK)}
        if name == c.state_topic:
            configs["cleanup.policy"] = "compact"
            partitions = c.shards
        return NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=replication,
            topic_configs=configs,
        )

    async def reset(self) -> None:
        """Drops the client (it may be stuck on a dead connection); the next call makes one."""
        admin, self._admin = self._admin, None
        if admin is not None:
            await admin.close()

    close = reset

    async def _ready(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            admin = AIOKafkaAdminClient(**self._kwargs, client_id=f"{self._client_id}-admin")
            try:
                await admin.start()
            except BaseException:
                await admin.close()
                raise
            self._admin = admin
        return self._admin


async def wait_for_leaders(
    client_kwargs: dict[str, Any], client_id: str, partitions: Mapping[str, Set[int]]
) -> None:
    """Returns once the leader of every partition of `partitions` (topic -> ids) serves it.

    Right after CreateTopics the metadata already names each partition's leader while that
    broker is still taking the leadership on: a produce then fails with NotLeaderForPartition
    and aiokafka logs a warning per retry. A ListOffsets is answered by the same leader check,
    and aiokafka's consumer retries it quietly until it succeeds, so the first produce finds
    every leader ready. The caller bounds the wait.
    """
    tps = [TopicPartition(t, p) for t, ids in partitions.items() for p in sorted(ids)]
    if not tps:
        return
    consumer = AIOKafkaConsumer(
        **client_kwargs,
        client_id=f"{client_id}-leaders",
        group_id=None,
        enable_auto_commit=False,
        # Leadership settles within milliseconds; the 100 ms default would be most of the wait.
        retry_backoff_ms=10,
    )
    try:
        await consumer.start()
        await consumer.end_offsets(tps)
    finally:
        await consumer.stop()


__all__ = ["TOPIC_SIZE_SLACK", "TopicAdmin", "broker_topic_defaults", "wait_for_leaders"]
