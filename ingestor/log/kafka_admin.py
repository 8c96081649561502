"""Kafka topic admin: creates the topics a batch needs, with the partitions and configs we own."""

from __future__ import annotations

from typing import Any

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from ingestor.config import KafkaConfig
from ingestor.errors import IngestorError, KafkaUnavailable

log = structlog.get_logger("ingestor.sink")

# Topics we create accept a little more than max_message_bytes: a batch holding one maximal
# record carries a 61-byte batch header, and compression can grow incompressible data slightly.
TOPIC_SIZE_SLACK = 16 * 1024


class TopicAdmin:
    """Creates topics through one lazily started admin client.

    The state topic is created compacted with ``state_topic_partitions`` partitions; every other
    topic (the DLQ included) gets ``topic_partitions``. A topic that already exists is fine
    (another process may have made it); its settings are left alone.
    """

    def __init__(self, config: KafkaConfig, client_kwargs: dict[str, Any], client_id: str) -> None:
        self._config = config
        self._kwargs = client_kwargs
        self._client_id = client_id
        self._admin: AIOKafkaAdminClient | None = None

    async def create(self, names: list[str]) -> None:
        """Creates `names`; raises KafkaUnavailable (retriable) or IngestorError (not)."""
        admin = await self._ready()
        response = await admin.create_topics([self.new_topic(name) for name in names])
        for entry in response.topic_errors:
            name, code = entry[0], entry[1]
            message = entry[2] if len(entry) > 2 else None
            if code == 0:
                log.info("sink.topic_created", topic=name)
                continue
            error = for_code(code)
            if error is TopicAlreadyExistsError:
                continue
            detail = f"cannot create topic {name!r}: {error.__name__}: {message or ''}".strip()
            if error.retriable:
                raise KafkaUnavailable(detail)
            # Bad name, replication above the broker count, policy: retrying cannot help.
            raise IngestorError(detail)

    def new_topic(self, name: str) -> NewTopic:
        c = self._config
        configs = {"max.message.bytes": str(c.max_message_bytes + TOPIC_SIZE_SLACK)}
        partitions = c.topic_partitions
        if name == c.state_topic:
            configs["cleanup.policy"] = "compact"
            partitions = c.state_topic_partitions
        return NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=c.topic_replication,
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


__all__ = ["TOPIC_SIZE_SLACK", "TopicAdmin"]
