"""Connection settings and error classification shared by the Kafka admin, restore and writer."""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.errors import InvalidProducerEpoch, ProducerFenced
from aiokafka.helpers import create_ssl_context

from ingestor.config import KafkaConfig
from ingestor.errors import ConfigError

FENCED = (ProducerFenced, InvalidProducerEpoch)


def kafka_client_kwargs(
    config: KafkaConfig, *, ssl_context: ssl.SSLContext | None = None
) -> dict[str, Any]:
    """Connection settings shared by every aiokafka client (producer, consumer, admin)."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers,
        "request_timeout_ms": int(config.request_timeout * 1000),
        "security_protocol": config.security_protocol,
    }
    context = ssl_context if ssl_context is not None else kafka_ssl_context(config)
    if context is not None:
        kwargs["ssl_context"] = context
    if config.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = config.sasl_mechanism
        kwargs["sasl_plain_username"] = config.sasl_username
        kwargs["sasl_plain_password"] = config.sasl_password.reveal()
    return kwargs


def kafka_ssl_context(config: KafkaConfig) -> ssl.SSLContext | None:
    if config.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    try:
        context: ssl.SSLContext = create_ssl_context(cafile=config.ssl_cafile or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("kafka.ssl_cafile", f"cannot load CA file: {exc}") from exc
    return context


def caused_by(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    """True if ``exc`` or anything in its cause/context chain is one of ``kinds``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


__all__ = ["FENCED", "caused_by", "kafka_client_kwargs", "kafka_ssl_context"]
