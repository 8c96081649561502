"""HealthServer on a real socket: /healthz, /readyz flipping with readiness and probes, /metrics."""

from __future__ import annotations

import socket

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from ingestor import health, metrics
from ingestor.errors import ClosedError


def ready_readiness() -> health.Readiness:
    r = health.Readiness()
    r.mark_kafka(True)
    r.mark_restored()
    r.mark_poll_ok()
    return r


def closed_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def test_port_zero_picks_a_free_port_and_healthz_answers_200() -> None:
    """/healthz is 200 while the process runs, even when not ready."""
    async with health.HealthServer(health.Readiness(), host="127.0.0.1", port=0) as server:
        assert server.port > 0
        status, _, body = await get(f"{server.url}/healthz")
    assert status == 200
    assert '"ok"' in body


async def test_readyz_flips_with_readiness_marks() -> None:
    """/readyz: 503 naming what is missing, 200 when ready, 503 again when Kafka goes away."""
    r = health.Readiness()
    async with health.HealthServer(r, port=0) as server:
        status, ctype, body = await get(f"{server.url}/readyz")
        assert status == 503
        assert ctype.startswith("application/json")
        assert "kafka: not connected" in body
        assert "state: not restored" in body
        r.mark_kafka(True)
        r.mark_restored()
        r.mark_poll_ok()
        status, _, body = await get(f"{server.url}/readyz")
        assert (status, body) == (200, '{"ready": true}')
        r.mark_kafka(False)
        status, _, body = await get(f"{server.url}/readyz")
        assert status == 503
        assert "kafka: not connected" in body


async def test_readyz_probe_reports_kafka_down_against_a_real_and_a_dead_broker(
    bootstrap: str,
) -> None:
    """A probe checking the broker keeps /readyz 200 while it answers and 503 when it does not."""
    target = {"servers": bootstrap}

    async def kafka_probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=target["servers"], request_timeout_ms=2000)
        try:
            await admin.start()
            await admin.describe_cluster()
            return True
        finally:
            await admin.close()

    r = ready_readiness()
    r.probe_timeout_seconds = 5.0
    r.add_probe("kafka", kafka_probe)
    async with health.HealthServer(r, port=0) as server:
        status, _, _ = await get(f"{server.url}/readyz")
        assert status == 200
        target["servers"] = f"127.0.0.1:{closed_port()}"
        status, _, body = await get(f"{server.url}/readyz")
        assert status == 503
        assert "kafka: probe failed" in body
        assert metrics.REGISTRY.get_sample_value("ingestor_ready") == 0


async def test_metrics_serves_prometheus_text_with_the_service_metrics() -> None:
    """/metrics is the Prometheus text format of ingestor.metrics.REGISTRY."""
    metrics.EVENTS_PUBLISHED.labels(source="v1", type="charge.succeeded").inc()
    async with health.HealthServer(ready_readiness(), port=0) as server:
        status, ctype, body = await get(f"{server.url}/metrics")
    assert status == 200
    assert ctype.startswith("text/plain")
    for name in (
        "ingestor_events_published_total",
        "ingestor_api_requests_total",
        "ingestor_event_lag_seconds_bucket",
        "ingestor_ready 1.0",
        "ingestor_cursor_gap_alarm",
        "ingestor_backfill_progress_ratio",
    ):
        assert name in body, name
    assert 'ingestor_events_published_total{source="v1",type="charge.succeeded"}' in body


async def test_close_twice_is_safe_and_use_after_close_raises() -> None:
    """close() is idempotent; the port is released; start/port after close raise ClosedError."""
    server = health.HealthServer(health.Readiness(), port=0)
    await server.start()
    port = server.port
    await server.close()
    await server.close()
    with pytest.raises(ClosedError):
        _ = server.port
    with pytest.raises(ClosedError):
        await server.start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free again


async def test_a_taken_port_fails_start_loudly() -> None:
    """Binding an occupied port raises (OSError) instead of running without health endpoints."""
    async with health.HealthServer(health.Readiness(), port=0) as first:
        second = health.HealthServer(health.Readiness(), port=first.port)
        with pytest.raises(OSError, match="in use"):
            await second.start()
        await second.close()
