"""`ingestor check`: probes Stripe and Kafka and says in plain words what is wrong."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from ingestor.clock import monotonic
from ingestor.config import BROKER_DEFAULT, Config, KafkaConfig, StripeConfig
from ingestor.errors import (
    KafkaUnavailable,
    StripeAuthError,
    StripeConnectionError,
    StripeError,
    StripeNotFound,
)
from ingestor.log.kafka_admin import broker_topic_defaults
from ingestor.log.kafka_common import kafka_client_kwargs
from ingestor.logs import mask_secrets
from ingestor.stripe_api import StripeClient

# WARN: works, but risky (printed; the exit code stays 0).
Status = Literal["OK", "WARN", "FAIL", "SKIP"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of `ingestor check`."""

    name: str
    status: Status
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<18} {mask_secrets(self.detail)}"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return mask_secrets(" ".join(text.split()))[:300]


# --- Stripe -----------------------------------------------------------------------------------


async def check_stripe(cfg: StripeConfig, probe_seconds: float) -> list[CheckResult]:
    """Key valid (and which mode/account), then whether v1 and v2 events are readable."""
    mode = "live" if cfg.live else "test"
    results: list[CheckResult] = []
    who: str | None

    async def get(client: StripeClient, path: str, **kw: Any) -> Any:
        # One retry at most: check answers fast; a flaky API shows up as a FAIL with its cause.
        async with asyncio.timeout(probe_seconds):
            return await client.request_json("GET", path, max_retries=1, **kw)

    async with StripeClient(cfg) as client:
        try:
            account = await get(client, "/v1/account")
            who = f"account {account.get('id', '?')}"
        except (StripeNotFound, StripeAuthError) as exc:
            # Restricted keys may not read the account; the balance proves the key all the same.
            if isinstance(exc, StripeAuthError) and exc.status == 401:
                results.append(
                    CheckResult(
                        "stripe key", "FAIL", f"{cfg.api_base} rejected the key: {_describe(exc)}"
                    )
                )
                return results + _skipped(cfg, "the key was rejected")
            try:
                await get(client, "/v1/balance")
                who = "account id not readable with this key"
            except StripeNotFound:
                # Neither endpoint exists (a simulator or a proxy): the event lists decide.
                who = None
            except Exception as exc2:
                results.append(CheckResult("stripe key", "FAIL", _stripe_problem(cfg, exc2)))
                return results + _skipped(cfg, "the key could not be verified")
        except Exception as exc:
            results.append(CheckResult("stripe key", "FAIL", _stripe_problem(cfg, exc)))
            return results + _skipped(cfg, "Stripe is not usable")
        events: list[CheckResult] = []
        if cfg.v1:
            events.append(await _events(get, client, "stripe v1 events", "/v1/events", "v1"))
        if cfg.v2:
            events.append(await _events(get, client, "stripe v2 events", "/v2/core/events", "v2"))
    if who is not None:
        key = CheckResult("stripe key", "OK", f"valid {mode}-mode key, {who} at {cfg.api_base}")
    elif any(r.ok for r in events):
        key = CheckResult(
            "stripe key",
            "OK",
            f"{mode}-mode key accepted by the events endpoint at {cfg.api_base} "
            "(no /v1/account there, account id unknown)",
        )
    else:
        key = CheckResult(
            "stripe key",
            "FAIL",
            f"{cfg.api_base} has no /v1/account or /v1/balance and no readable event list",
        )
    return [key, *events]
    return results


async def _events(
    get: Callable[..., Awaitable[Any]], client: StripeClient, name: str, path: str, api: str
) -> CheckResult:
    try:
        page = await get(client, path, params=[("limit", "1")], api=api)
    except Exception as exc:
        return CheckResult(name, "FAIL", f"cannot list {path}: {_describe(exc)}")
    data = page.get("data") if isinstance(page, dict) else None
    if not isinstance(data, list):
        return CheckResult(name, "FAIL", f"{path} answered without a data list")
    if not data:
        return CheckResult(name, "OK", f"{path} readable (no events yet)")
    newest = data[0] if isinstance(data[0], dict) else {}
    return CheckResult(name, "OK", f"{path} readable (newest {newest.get('id', '?')})")


def _stripe_problem(cfg: StripeConfig, exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer from {cfg.api_base} in time"
    if isinstance(exc, StripeConnectionError):
        return f"cannot reach {cfg.api_base}: {_describe(exc)}"
    if isinstance(exc, StripeAuthError):
        return f"{cfg.api_base} refused the key (HTTP {exc.status}): {_describe(exc)}"
    if isinstance(exc, StripeError):
        return f"{cfg.api_base} answered HTTP {exc.status}: {_describe(exc)}"
    return f"{type(exc).__name__}: {_describe(exc)}"


def _skipped(cfg: StripeConfig, why: str) -> list[CheckResult]:
    out = []
    if cfg.v1:
        out.append(CheckResult("stripe v1 events", "SKIP", why))
    if cfg.v2:
        out.append(CheckResult("stripe v2 events", "SKIP", why))
    return out


# --- Kafka ------------------------------------------------------------------------------------


async def check_kafka(cfg: KafkaConfig, probe_seconds: float) -> list[CheckResult]:
    """Reachable, transactions available, topics creatable under the prefix."""
    kw = kafka_client_kwargs(cfg)
    kw["request_timeout_ms"] = int(min(cfg.request_timeout, probe_seconds) * 1000)
    results: list[CheckResult] = []
    admin = AIOKafkaAdminClient(**kw)
    try:
        try:
            async with asyncio.timeout(probe_seconds):
                await admin.start()
                cluster = await admin.describe_cluster()
                topics = await admin.list_topics()
        except (TimeoutError, KafkaError, OSError) as exc:
            why = "no answer in time" if isinstance(exc, TimeoutError) else _describe(exc)
            results.append(
                CheckResult("kafka reachable", "FAIL", f"{cfg.bootstrap_servers}: {why}")
            )
            skip = f"broker {cfg.bootstrap_servers} unreachable"
            results.append(CheckResult("kafka transactions", "SKIP", skip))
            results.append(CheckResult("kafka topics", "SKIP", skip))
            return results
        brokers = len(cluster.get("brokers", []))
        mine = [t for t in topics if t.startswith(cfg.topic_prefix + ".")]
        state = "exists" if cfg.state_topic in topics else "not created yet"
        results.append(
            CheckResult(
                "kafka reachable",
                "OK",
                f"{cfg.bootstrap_servers}: {brokers} broker(s), cluster "
                f"{cluster.get('cluster_id')}; {len(mine)} topic(s) under '{cfg.topic_prefix}.', "
                f"state topic {state}",
            )
        )
        results.append(await _check_transactions(cfg, kw, probe_seconds))
        results.append(await _check_topics(cfg, admin, brokers, probe_seconds))
    finally:
        await admin.close()
    return results


async def _check_transactions(
    cfg: KafkaConfig, kw: dict[str, Any], probe_seconds: float
) -> CheckResult:
    name = "kafka transactions"
    if cfg.delivery != "exactly_once":
        return CheckResult(name, "OK", "not needed (delivery = at_least_once)")
    # A throwaway id: the real shard's id must never be fenced by a check.
    producer = AIOKafkaProducer(transactional_id=f"ingestor-check-{uuid.uuid4().hex}", **kw)
    try:
        async with asyncio.timeout(probe_seconds):
            await producer.start()
            await producer.begin_transaction()
            await producer.commit_transaction()
    except TimeoutError:
        return CheckResult(
            name,
            "FAIL",
            f"no transaction coordinator within {probe_seconds:g}s (a single broker needs "
            "transaction.state.log.replication.factor=1 and transaction.state.log.min.isr=1)",
        )
    except (KafkaError, OSError) as exc:
        return CheckResult(name, "FAIL", f"cannot start a transactional producer: {_describe(exc)}")
    finally:
        # Bounded: stopping a producer whose start hung must not hang `check` itself.
        with contextlib.suppress(TimeoutError, KafkaError, OSError):
            async with asyncio.timeout(probe_seconds):
                await producer.stop()
    return CheckResult(name, "OK", "a transactional producer started and committed")


async def _check_topics(
    cfg: KafkaConfig, admin: AIOKafkaAdminClient, brokers: int, probe_seconds: float
) -> CheckResult:
    """Creates and deletes a probe topic with the replication factor topics will get (the
    broker's default when kafka.topic_replication = 0); FAIL when it exceeds the broker count,
    WARN when it is 1 on a cluster of several brokers."""
    name = "kafka topics"
    started = monotonic()
    try:
        async with asyncio.timeout(probe_seconds):
            partitions, replication = cfg.topic_partitions, cfg.topic_replication
            if BROKER_DEFAULT in (partitions, replication):
                defaults = await broker_topic_defaults(admin)
                partitions, replication = partitions or defaults[0], replication or defaults[1]
            setting = (
                f"default.replication.factor = {replication} (kafka.topic_replication = 0)"
                if cfg.topic_replication == BROKER_DEFAULT
                else f"kafka.topic_replication = {replication}"
            )
            if brokers and replication > brokers:
                return CheckResult(
                    name, "FAIL", f"{setting} but the cluster has {brokers} broker(s)"
                )
            probe = f"{cfg.topic_prefix}._ingestor_check_{uuid.uuid4().hex[:12]}"
            created = await admin.create_topics(
                [NewTopic(probe, num_partitions=1, replication_factor=replication)]
            )
            problem = _topic_error(created.to_object())
            if problem:
                return CheckResult(name, "FAIL", f"cannot create topic {probe}: {problem}")
            deleted = await admin.delete_topics([probe])
            problem = _topic_error(deleted.to_object())
            if problem:
                return CheckResult(name, "FAIL", f"created {probe} but cannot delete it: {problem}")
    except TimeoutError:
        return CheckResult(name, "FAIL", f"creating/deleting a probe took over {probe_seconds:g}s")
    except KafkaUnavailable as exc:
        return CheckResult(name, "FAIL", _describe(exc))
    except (KafkaError, OSError) as exc:
        return CheckResult(name, "FAIL", f"cannot create a probe topic: {_describe(exc)}")
    took = monotonic() - started
    shape = f"topics get {partitions} partition(s), replication {replication}"
    if replication == 1 and brokers > 1:
        return CheckResult(
            name,
            "WARN",
            f"{setting} on a cluster of {brokers} brokers: losing one broker loses data; "
            "set kafka.topic_replication (or the broker's default.replication.factor) to 3",
        )
    return CheckResult(
        name, "OK", f"created and deleted probe topic {probe} ({took * 1000:.0f} ms); {shape}"
    )


def _topic_error(obj: dict[str, Any]) -> str | None:
    """The first per-topic error in a CreateTopics/DeleteTopics response, if any."""
    for key in ("topic_errors", "topic_error_codes"):
        for item in obj.get(key, []):
            code = item.get("error_code", 0)
            if code:
                message = item.get("error_message") or ""
                return f"error code {code} {message}".strip()
    return None


# --- all --------------------------------------------------------------------------------------


async def run_checks(config: Config, *, probe_seconds: float = 10.0) -> list[CheckResult]:
    """Stripe and Kafka probed concurrently; each probe bounded by `probe_seconds` seconds."""
    async with asyncio.TaskGroup() as tg:
        stripe = tg.create_task(check_stripe(config.stripe, probe_seconds))
        kafka = tg.create_task(check_kafka(config.kafka, probe_seconds))
    return stripe.result() + kafka.result()


def main(config: Config, *, timeout: float, out: TextIO) -> int:
    """Prints one line per check; 0 when all passed, 1 (naming what failed) otherwise."""
    results = asyncio.run(run_checks(config, probe_seconds=timeout))
    for result in results:
        out.write(result.line() + "\n")
    failed = [r.name for r in results if r.status == "FAIL"]
    if failed:
        out.write(f"check failed: {', '.join(failed)}\n")
        return 1
    out.write("all checks passed\n")
    return 0
