"""The Kafka sink under its historical name: `Sink` is `ingestor.log.kafka_writer.KafkaLog`."""

from __future__ import annotations

from ingestor.log import BatchResult
from ingestor.log.kafka_common import kafka_client_kwargs
from ingestor.log.kafka_writer import KafkaLog
from ingestor.log.partition import CachingPartitioner

Sink = KafkaLog

__all__ = ["BatchResult", "CachingPartitioner", "Sink", "kafka_client_kwargs"]
