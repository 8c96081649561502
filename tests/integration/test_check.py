"""`ingestor check` against an aiohttp Stripe stub and the real broker (and a dead port)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient

from ingestor import check, config

ROOT = Path(__file__).resolve().parents[2]
GOOD = "sk_test_51CheckGoodKey"
BAD = "sk_test_51CheckWrongKey"


def stub_app(*, account_status: int = 200, has_account: bool = True) -> web.Application:
    """The few Stripe endpoints check uses; 401 with Stripe's error body for other keys."""

    def authed(request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {GOOD}"

    def unauthorized() -> web.Response:
        return web.json_response(
            {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided"}},
            status=401,
        )

    async def account(request: web.Request) -> web.Response:
        if not authed(request):
            return unauthorized()
        if account_status != 200:
            return web.json_response(
                {"error": {"type": "invalid_request_error", "message": "no permission"}},
                status=account_status,
            )
        return web.json_response({"id": "acct_1Stub", "object": "account"})

    async def balance(request: web.Request) -> web.Response:
        if not authed(request):
            return unauthorized()
        return web.json_response({"object": "balance", "livemode": False})

    async def v1_events(request: web.Request) -> web.Response:
        if not authed(request):
            return unauthorized()
        data = [{"id": "evt_1Newest", "object": "event"}]
        return web.json_response({"object": "list", "data": data, "has_more": True})

    async def v2_events(request: web.Request) -> web.Response:
        if not authed(request):
            return unauthorized()
        return web.json_response({"data": [], "next_page_url": None, "previous_page_url": None})

    app = web.Application()
    if has_account:
        app.router.add_get("/v1/account", account)
        app.router.add_get("/v1/balance", balance)
    app.router.add_get("/v1/events", v1_events)
    app.router.add_get("/v2/core/events", v2_events)
    return app


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def stripe_stub() -> AsyncIterator[str]:
    runner, url = await serve(stub_app())
    try:
        yield url
    finally:
        await runner.cleanup()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(api_base: str, bootstrap: str, prefix: str, **env: str) -> config.Config:
    base = {
        "STRIPE_API_KEY": GOOD,
        "STRIPE_API_BASE": api_base,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "INGESTOR_TOPIC_PREFIX": prefix,
    }
    return config.load(env={**base, **env}, defaults_file=None).config


def by_name(results: list[check.CheckResult]) -> dict[str, check.CheckResult]:
    return {r.name: r for r in results}


async def test_all_checks_pass_against_the_stub_and_the_real_broker(
    stripe_stub: str, bootstrap: str, topic_prefix: str
) -> None:
    """Key valid (test mode, account id), events readable, Kafka reachable, txns, topics."""
    results = by_name(
        await check.run_checks(make_config(stripe_stub, bootstrap, topic_prefix), probe_seconds=20)
    )
    assert {name: r.status for name, r in results.items()} == {
        "stripe key": "OK",
        "stripe v1 events": "OK",
        "stripe v2 events": "OK",
        "kafka reachable": "OK",
        "kafka transactions": "OK",
        "kafka topics": "OK",
    }
    assert "test-mode" in results["stripe key"].detail
    assert "acct_1Stub" in results["stripe key"].detail
    assert "evt_1Newest" in results["stripe v1 events"].detail
    assert "no events yet" in results["stripe v2 events"].detail
    assert "1 broker" in results["kafka reachable"].detail
    # The probe topic was deleted again.
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        leftovers = [t for t in await admin.list_topics() if t.startswith(topic_prefix)]
    finally:
        await admin.close()
    assert leftovers == []


async def test_wrong_key_fails_in_plain_words_and_skips_the_event_checks(
    stripe_stub: str, bootstrap: str, topic_prefix: str
) -> None:
    """A rejected key says so (without printing the key) and the event checks are skipped."""
    cfg = make_config(stripe_stub, bootstrap, topic_prefix, STRIPE_API_KEY=BAD)
    results = by_name(await check.check_stripe(cfg.stripe, probe_seconds=10))
    key = results["stripe key"]
    assert key.status == "FAIL"
    assert "rejected the key" in key.detail
    assert BAD not in key.line()
    assert results["stripe v1 events"].status == "SKIP"
    assert results["stripe v2 events"].status == "SKIP"


async def test_restricted_key_without_account_access_is_verified_via_balance(
    bootstrap: str, topic_prefix: str
) -> None:
    """403 on /v1/account (restricted key) falls back to /v1/balance: still OK."""
    runner, url = await serve(stub_app(account_status=403))
    try:
        cfg = make_config(url, bootstrap, topic_prefix)
        results = by_name(await check.check_stripe(cfg.stripe, probe_seconds=10))
    finally:
        await runner.cleanup()
    assert results["stripe key"].status == "OK"
    assert "account id not readable" in results["stripe key"].detail


async def test_api_without_account_endpoints_verifies_the_key_by_listing_events(
    bootstrap: str, topic_prefix: str
) -> None:
    """A simulator without /v1/account: the key is OK when the event lists accept it."""
    runner, url = await serve(stub_app(has_account=False))
    try:
        good = make_config(url, bootstrap, topic_prefix)
        ok = by_name(await check.check_stripe(good.stripe, probe_seconds=10))
        bad = make_config(url, bootstrap, topic_prefix, STRIPE_API_KEY=BAD)
        rejected = by_name(await check.check_stripe(bad.stripe, probe_seconds=10))
    finally:
        await runner.cleanup()
    assert ok["stripe key"].status == "OK"
    assert "accepted by the events endpoint" in ok["stripe key"].detail
    assert ok["stripe v1 events"].status == "OK"
    assert rejected["stripe key"].status == "FAIL"
    assert rejected["stripe v1 events"].status == "FAIL"


async def test_unreachable_stripe_fails_naming_the_url(bootstrap: str, topic_prefix: str) -> None:
    """Nothing listening at api_base: FAIL 'cannot reach <url>' within the bound."""
    url = f"http://127.0.0.1:{closed_port()}"
    cfg = make_config(url, bootstrap, topic_prefix)
    started = time.monotonic()
    results = by_name(await check.check_stripe(cfg.stripe, probe_seconds=5))
    assert time.monotonic() - started < 10
    assert results["stripe key"].status == "FAIL"
    assert url in results["stripe key"].detail


async def test_unreachable_broker_fails_within_a_bounded_time(
    stripe_stub: str, topic_prefix: str
) -> None:
    """A closed broker port: 'kafka reachable' FAIL fast; dependent Kafka checks skipped."""
    servers = f"127.0.0.1:{closed_port()}"
    cfg = make_config(stripe_stub, servers, topic_prefix)
    started = time.monotonic()
    results = by_name(await check.check_kafka(cfg.kafka, probe_seconds=3))
    assert time.monotonic() - started < 6
    assert results["kafka reachable"].status == "FAIL"
    assert servers in results["kafka reachable"].detail
    assert results["kafka transactions"].status == "SKIP"
    assert results["kafka topics"].status == "SKIP"


async def test_replication_above_the_broker_count_fails_the_topic_check(
    stripe_stub: str, bootstrap: str, topic_prefix: str
) -> None:
    """topic_replication=3 on the one-broker dev cluster is named as the problem."""
    cfg = make_config(stripe_stub, bootstrap, topic_prefix, INGESTOR_KAFKA__TOPIC_REPLICATION="3")
    results = by_name(await check.check_kafka(cfg.kafka, probe_seconds=10))
    assert results["kafka reachable"].status == "OK"
    assert results["kafka topics"].status == "FAIL"
    assert "topic_replication = 3" in results["kafka topics"].detail


async def run_cli(*argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "KAFKA_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ingestor",
        *argv,
        env={**clean, **env},
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_check_prints_one_line_per_check_and_exits_0(
    stripe_stub: str, bootstrap: str, topic_prefix: str
) -> None:
    """`ingestor check` as a process: OK lines, 'all checks passed', exit 0, key never shown."""
    env = {
        "STRIPE_API_KEY": GOOD,
        "STRIPE_API_BASE": stripe_stub,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "INGESTOR_TOPIC_PREFIX": topic_prefix,
    }
    code, out, err = await run_cli("check", "--timeout", "20", env=env)
    assert code == 0, out + err
    lines = out.splitlines()
    assert len(lines) == 7
    assert all(line.startswith("OK ") for line in lines[:-1])
    assert lines[-1] == "all checks passed"
    assert GOOD not in out + err


async def test_cli_check_exits_1_naming_the_failed_checks(
    stripe_stub: str, topic_prefix: str
) -> None:
    """With the broker down: FAIL line for Kafka, a summary naming it, exit 1."""
    env = {
        "STRIPE_API_KEY": GOOD,
        "STRIPE_API_BASE": stripe_stub,
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port()}",
        "INGESTOR_TOPIC_PREFIX": topic_prefix,
    }
    code, out, _ = await run_cli("check", "--timeout", "3", env=env)
    assert code == 1
    assert any(line.startswith("FAIL  kafka reachable") for line in out.splitlines())
    assert out.splitlines()[-1] == "check failed: kafka reachable"


async def test_topic_check_reads_the_broker_default_replication_and_names_it(
    stripe_stub: str, bootstrap: str, topic_prefix: str
) -> None:
    """With kafka.topic_replication = 0 (the default) the probe uses the broker's
    default.replication.factor; on the one-broker dev cluster that is 1: OK, no warning."""
    cfg = make_config(stripe_stub, bootstrap, topic_prefix)
    assert cfg.kafka.topic_replication == config.BROKER_DEFAULT
    results = by_name(await check.check_kafka(cfg.kafka, probe_seconds=10))
    assert results["kafka topics"].status == "OK", results["kafka topics"]
    assert "replication 1" in results["kafka topics"].detail


@pytest.mark.parametrize(
    ("replication", "named"),
    [
        ("0", "default.replication.factor = 1 (kafka.topic_replication = 0)"),
        ("1", "kafka.topic_replication = 1"),
    ],
)
async def test_replication_1_on_a_cluster_of_several_brokers_is_a_warning(
    stripe_stub: str, bootstrap: str, topic_prefix: str, replication: str, named: str
) -> None:
    """Replication factor 1 (set, or the broker's default) where the cluster reports three
    brokers: WARN naming the setting, and the command still exits 0. The broker count is
    passed in (the dev cluster has one broker); the probe topic is really created."""
    cfg = make_config(
        stripe_stub, bootstrap, topic_prefix, INGESTOR_KAFKA__TOPIC_REPLICATION=replication
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        result = await check._check_topics(cfg.kafka, admin, 3, 10)
    finally:
        await admin.close()
    assert result.status == "WARN"
    assert named in result.detail
    assert "3 brokers" in result.detail
    assert result.line().startswith("WARN  kafka topics")
