"""Integration harness: config for a run against the simulator, and Kafka read-back checks."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from ingestor import config
from ingestor.metrics import REGISTRY
from ingestor.route import Router
from tests.integration.kafka_util import read_all

TEST_KEY = "sk_test_integration_0123456789"


def make_config(
    sim_url: str, bootstrap: str, prefix: str, **settings: str | float | int | bool
) -> config.Loaded:
    """A config as the service builds it; `settings` are `section__key` overrides."""
    env = {
        "STRIPE_API_KEY": TEST_KEY,
        "STRIPE_API_BASE": sim_url,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "INGESTOR_TOPIC_PREFIX": prefix,
        "INGESTOR_HTTP_PORT": "0",
        "STRIPE_RATE_LIMIT": "400",
        "INGESTOR_TAIL__POLL_INTERVAL": "0.2",
        "INGESTOR_KAFKA__TOPIC_PARTITIONS": "3",
        "INGESTOR_ALARMS__SHUTDOWN_GRACE_SECONDS": "5",
    }
    for name, value in settings.items():
        env[f"INGESTOR_{name.upper()}"] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    return config.load(env=env, defaults_file=None)


async def published(bootstrap: str, prefix: str) -> list[Any]:
    """Every committed event record under the prefix (not the state topic)."""
    records = await read_all(bootstrap, re.escape(prefix) + r"\..*", within=60)
    return [r for r in records if not r.topic.endswith("._ingestor_state")]


async def wait_published(
    bootstrap: str, prefix: str, ids: set[str], *, within: float = 60.0
) -> list[Any]:
    """Reads until every id in `ids` is visible to read_committed, then returns all records.

    A commit returns before the transaction markers reach every partition, so the last
    transaction may become visible to read_committed consumers a moment later.
    """
    missing: set[str] = set(ids)
    try:
        async with asyncio.timeout(within):
            while True:
                records = await published(bootstrap, prefix)
                missing = ids - {headers(r)["event_id"] for r in records}
                if not missing:
                    return records
                await asyncio.sleep(0.5)
    except TimeoutError:
        raise AssertionError(
            f"{len(missing)} of {len(ids)} events never became visible, e.g. {sorted(missing)[:3]}"
        ) from None


def headers(record: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}


def check_exactly_once(
    records: list[Any], truth: Sequence[Mapping[str, Any]], prefix: str
) -> dict[str, Any]:
    """Asserts every truth event was published exactly once, to its topic, with its key."""
    router = Router(prefix)
    by_id: dict[str, Any] = {}
    counts = Counter(headers(r)["event_id"] for r in records if not r.topic.endswith(".dlq"))
    dupes = {k: n for k, n in counts.items() if n > 1}
    assert not dupes, f"{len(dupes)} events published more than once, e.g. {list(dupes)[:3]}"
    for r in records:
        by_id[headers(r)["event_id"]] = r
    missing = [t["id"] for t in truth if t["id"] not in by_id]
    assert not missing, f"{len(missing)} of {len(truth)} events missing, e.g. {missing[:3]}"
    extra = set(by_id) - {t["id"] for t in truth}
    assert not extra, f"{len(extra)} published events are not in the ground truth"
    for t in truth:
        r = by_id[t["id"]]
        h = headers(r)
        assert r.topic == router.topic_for(t["type"]), (t, r.topic)
        assert h["event_type"] == t["type"]
        assert h["source"] == t["api"]
        assert (h.get("account") or None) == (t.get("account") or None)
        if t.get("object_id"):
            assert r.key == t["object_id"].encode(), (t, r.key)
        value = orjson.loads(r.value)
        if t["api"] == "v1":
            assert value["id"] == t["id"]
        else:
            assert value["event"]["id"] == t["id"]
    return by_id


def metric(name: str, **labels: str) -> float:
    """The current value of a sample in the service's registry (0 when never set)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def until(condition: Callable[[], bool], *, within: float, every: float = 0.2) -> None:
    """Polls `condition` until it holds; AssertionError after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition still false after {within:g}s")
        await asyncio.sleep(every)
