"""The Kafka writer refuses to start on an aiokafka other than the one its private access fits."""

from __future__ import annotations

import aiokafka
import pytest

from ingestor.config import KafkaConfig
from ingestor.errors import IncompatibleDependency
from ingestor.log.kafka_private import AIOKAFKA_VERSION, check_aiokafka_version
from ingestor.log.kafka_writer import KafkaLog


def test_the_pinned_version_is_the_installed_one() -> None:
    """The pin in pyproject.toml and the version the private access was written against agree."""
    assert aiokafka.__version__ == AIOKAFKA_VERSION
    check_aiokafka_version()


def test_another_version_is_refused_with_a_message_naming_both() -> None:
    """A different aiokafka is an IncompatibleDependency that says what to install."""
    with pytest.raises(IncompatibleDependency) as info:
        check_aiokafka_version("0.15.0")
    assert "aiokafka 0.15.0 is installed" in str(info.value)
    assert f"aiokafka=={AIOKAFKA_VERSION}" in str(info.value)


async def test_the_writer_does_not_start_on_another_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Entering the Kafka log with a mismatched aiokafka fails before anything connects."""
    monkeypatch.setattr(aiokafka, "__version__", "0.13.9")
    with pytest.raises(IncompatibleDependency, match=r"0\.13\.9"):
        async with KafkaLog(KafkaConfig()):
            pass
