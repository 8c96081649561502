"""Shared fixtures: the real broker's address and a unique topic prefix per test."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError


def pytest_configure(config: pytest.Config) -> None:
    # looptime's plugin asks the event loop policy for the loop of every test, sync tests too.
    # Before any loop was set, Python 3.11's policy then creates a loop that nobody closes (an
    # unclosed-loop ResourceWarning, an error under filterwarnings=error). Setting "no loop"
    # explicitly makes the policy raise instead, which the plugin expects and handles.
    asyncio.set_event_loop(None)


@pytest.fixture
def bootstrap() -> str:
    """The broker `make kafka-up` started (integration tests fail, never skip, without it)."""
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


@pytest.fixture
async def topic_prefix(bootstrap: str) -> AsyncIterator[str]:
    """A prefix no other test uses, so tests never see each other's topics or state.

    Its topics are deleted afterwards: a single-node broker with a 512 MB heap runs out of
    memory once a few hundred test runs have left tens of thousands of partitions behind.
    """
    prefix = f"t{uuid.uuid4().hex[:12]}"
    yield prefix
    await _delete_topics(bootstrap, prefix)


async def _delete_topics(bootstrap: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        async with asyncio.timeout(20):
            await admin.start()
            names = [t for t in await admin.list_topics() if t.startswith(prefix + ".")]
            if names:
                await admin.delete_topics(names)
    except (KafkaError, OSError, TimeoutError):
        pass  # best effort: a test that stopped the broker on purpose leaves nothing to clean
    finally:
        await admin.close()
