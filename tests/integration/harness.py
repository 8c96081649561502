"""Integration harness: config for a run against the simulator, and Kafka read-back checks."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from ingestor import config
from ingestor.metrics import REGISTRY
from ingestor.route import Router
from ingestor.sim.scenario import Scenario, load_scenario
from ingestor.sim.simulator import Simulator
from tests.integration.kafka_util import ROOT, free_port, read_all

TEST_KEY = "sk_test_integration_0123456789"
# These tests are about delivery, not Stripe's limits (test_limits.py is): the simulator and the
# client both run with the limits of an account whose limits Stripe raised.
RAISED_LIMIT = 400


def sim_scenario(**changes: Any) -> Scenario:
    """The default scenario with raised limits (both rates at RAISED_LIMIT) and `changes`."""
    limits: dict[str, Any] = {"rate_limit": RAISED_LIMIT, "endpoint_rate_limit": RAISED_LIMIT}
    return dataclasses.replace(load_scenario(None), **{**limits, **changes})


def make_config(
    sim_url: str, bootstrap: str, prefix: str, **settings: str | float | int | bool
) -> config.Loaded:
    """A config as the service builds it; `settings` are `section__key` overrides. The limits
    are raised to RAISED_LIMIT, as in `sim_scenario` (a test's own stripe__* replaces them)."""
    env = {
        "STRIPE_API_KEY": TEST_KEY,
        "STRIPE_API_BASE": sim_url,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "INGESTOR_TOPIC_PREFIX": prefix,
        "INGESTOR_HTTP_PORT": "0",
        # The generic form, so a test's own stripe__rate_limit replaces it.
        "INGESTOR_STRIPE__RATE_LIMIT": str(RAISED_LIMIT),
        "INGESTOR_STRIPE__ENDPOINT_RATE_LIMIT": str(RAISED_LIMIT),
        "INGESTOR_TAIL__POLL_INTERVAL": "0.2",
        "INGESTOR_KAFKA__TOPIC_PARTITIONS": "3",
        "INGESTOR_KAFKA__TOPIC_REPLICATION": "1",
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


async def settle(sim: Simulator, *, within: float, every: float = 0.2) -> None:
    """Waits until every late event the simulator holds has become visible."""

    def settled() -> bool:
        sim.tick()
        return not sim.events.pending

    await until(settled, within=within, every=every)


async def until(condition: Callable[[], bool], *, within: float, every: float = 0.2) -> None:
    """Polls `condition` until it holds; AssertionError after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition still false after {within:g}s")
        await asyncio.sleep(every)


# --- `ingestor run` as a subprocess ---------------------------------------------------------

PYTHON = ROOT / ".venv" / "bin" / "python"
# Our own settings are the only ones the process sees (none leak in from the test's env).
_OWN_ENV = ("STRIPE_", "INGESTOR_", "KAFKA_")


@dataclass
class Proc:
    """A running `ingestor run` with its output captured to files."""

    proc: asyncio.subprocess.Process
    out: Path
    err: Path
    http: str
    key: str = TEST_KEY

    async def wait(self, within: float) -> int:
        return await asyncio.wait_for(self.proc.wait(), within)

    def lines(self) -> list[str]:
        text = self.out.read_text() + self.err.read_text()
        return [line for line in text.splitlines() if line.strip()]

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def start(
    sim_url: str,
    bootstrap: str,
    prefix: str,
    tmp: Path,
    *args: str,
    key: str = TEST_KEY,
    **settings: str,
) -> Proc:
    """`ingestor run *args` against the simulator and broker; `settings` are `section__key`
    overrides, `key` the API key (stripe-mock wants sk_test_ then letters and digits only).
    Output goes to files in `tmp` (pipes could fill up and block the process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_ENV)}
    port = free_port()
    env.update(
        STRIPE_API_KEY=key,
        STRIPE_API_BASE=sim_url,
        STRIPE_ACCOUNTS="all",
        # The generic form, so a test's own stripe__rate_limit replaces it.
        INGESTOR_STRIPE__RATE_LIMIT=str(RAISED_LIMIT),
        INGESTOR_STRIPE__ENDPOINT_RATE_LIMIT=str(RAISED_LIMIT),
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        INGESTOR_TOPIC_PREFIX=prefix,
        INGESTOR_HTTP_PORT=str(port),
        INGESTOR_TAIL__POLL_INTERVAL="0.2",
        INGESTOR_TAIL__OVERLAP_SECONDS="1",
        INGESTOR_TAIL__SWEEP_INTERVAL_SECONDS="1",
        INGESTOR_TAIL__SWEEP_WINDOW_SECONDS="60",
        INGESTOR_KAFKA__TOPIC_PARTITIONS="3",
        INGESTOR_KAFKA__TOPIC_REPLICATION="1",
        INGESTOR_ALARMS__SHUTDOWN_GRACE_SECONDS="5",
    )
    env.update({f"INGESTOR_{k.upper()}": v for k, v in settings.items()})
    n = sum(1 for _ in tmp.glob("out-*.log"))  # noqa: ASYNC240 - a tiny local directory
    out, err = tmp / f"out-{n}.log", tmp / f"err-{n}.log"
    with out.open("wb") as fo, err.open("wb") as fe:
        proc = await asyncio.create_subprocess_exec(
            str(PYTHON), "-m", "ingestor", "run", *args, env=env, cwd=ROOT, stdout=fo, stderr=fe
        )
    return Proc(proc, out, err, f"http://127.0.0.1:{port}", key)


async def http_get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


async def wait_ready(p: Proc, within: float = 30.0) -> None:
    async with asyncio.timeout(within):
        while True:
            if p.proc.returncode is not None:
                raise AssertionError(f"process exited early: {p.lines()[-5:]}")
            try:
                status, _ = await http_get(p.http + "/readyz")
                if status == 200:
                    return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)


def check_output(p: Proc) -> list[dict[str, Any]]:
    """Every output line is a JSON object (not a TTY), and none shows the API key."""
    lines = p.lines()
    assert lines
    docs = []
    for line in lines:
        assert p.key not in line
        doc = orjson.loads(line)
        assert isinstance(doc, dict), line
        docs.append(doc)
    return docs
