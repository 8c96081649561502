"""Test helpers: a read_committed reader of whole topics, and a private second Kafka broker."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

ROOT = Path(__file__).resolve().parents[2]
KAFKA_SH = ROOT / "dev" / "kafka" / "kafka.sh"


async def read_all(
    bootstrap: str,
    topics: Iterable[str] | str,
    *,
    within: float = 30.0,
    isolation_level: str = "read_committed",
) -> list[Any]:
    """Every committed record of the given topics, as a read_committed consumer sees them.

    ``topics`` is a list of names, or a single string taken as a regular expression that must
    match whole topic names (e.g. ``re.escape(prefix) + r"\\..*"``). Each partition is read from
    its beginning to its end offset (the last stable offset, so nothing undecided is waited
    for), all within ``within`` seconds.
    Returns aiokafka ``ConsumerRecord`` objects ordered by (topic, partition, offset). Topics that
    do not exist are an error when named, and simply absent when matched by a pattern.
    ``isolation_level="read_uncommitted"`` shows aborted records too (to prove they were written).
    """
    records: list[Any] = []
    async with asyncio.timeout(within):
        partitions = await _partitions(bootstrap, topics)
        tps = [TopicPartition(t, p) for t in sorted(partitions) for p in partitions[t]]
        if not tps:
            return []
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level=isolation_level,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            pending = {tp for tp in tps if end[tp] > 0}
            by_tp: dict[TopicPartition, list[Any]] = {tp: [] for tp in tps}
            while pending:
                batches = await consumer.getmany(*pending, timeout_ms=500)
                for tp, messages in batches.items():
                    by_tp[tp] += [m for m in messages if m.offset < end[tp]]
                for tp in list(pending):
                    if await consumer.position(tp) >= end[tp]:
                        pending.discard(tp)
            for tp in tps:
                records += by_tp[tp]
        finally:
            await consumer.stop()
    return records


async def undecided_offsets(bootstrap: str, topics: Iterable[str] | str) -> int:
    """How many offsets of the topics sit behind an open transaction (high watermark minus last
    stable offset, summed over partitions); 0 means every transaction is committed or aborted.
    """
    partitions = await _partitions(bootstrap, topics)
    tps = [TopicPartition(t, p) for t in sorted(partitions) for p in partitions[t]]
    ends: dict[str, dict[TopicPartition, int]] = {}
    for level in ("read_uncommitted", "read_committed"):
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, isolation_level=level
        )
        await consumer.start()
        try:
            ends[level] = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
    return sum(ends["read_uncommitted"][tp] - ends["read_committed"][tp] for tp in tps)


async def _partitions(bootstrap: str, topics: Iterable[str] | str) -> dict[str, list[int]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if isinstance(topics, str):
            pattern = re.compile(topics)
            names = sorted(t for t in await admin.list_topics() if pattern.fullmatch(t))
        else:
            names = sorted(set(topics))
        if not names:
            return {}
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    found = {
        d["topic"]: sorted(p["partition"] for p in d["partitions"])
        for d in described
        if d["error_code"] == 0
    }
    missing = [t for t in names if not found.get(t)]
    assert not missing, f"no such topics: {missing}"
    return found


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Broker:
    """A private single-node broker started with dev/kafka/kafka.sh, for tests that stop it."""

    state_dir: Path
    port: int
    controller_port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def up(self) -> None:
        """Starts the broker (same ports, same data) and returns once it accepts transactions."""
        await self._run("up")

    async def down(self) -> None:
        """Stops the broker cleanly (SIGTERM, then SIGKILL after 30 s)."""
        await self._run("down")

    async def _run(self, action: str) -> None:
        env = {
            **os.environ,
            "KAFKA_STATE_DIR": str(self.state_dir),
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "PYTHON": str(ROOT / ".venv" / "bin" / "python"),
        }
        proc = await asyncio.create_subprocess_exec(
            str(KAFKA_SH),
            action,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"kafka.sh {action} failed ({proc.returncode}): {output.decode()}")


@asynccontextmanager
async def second_broker(state_dir: Path) -> AsyncIterator[Broker]:
    """Starts a private broker keeping its data in ``state_dir`` and always stops it after.

    Use from a fixture: ``async with second_broker(tmp_path / "kafka") as broker: yield broker``.
    Never touches the shared broker on 9092.
    """
    broker = Broker(state_dir=state_dir, port=free_port(), controller_port=free_port())
    try:
        await broker.up()
        yield broker
    finally:
        await broker.down()
