"""Stripe's default limits end to end: a backfill against the simulator enforcing them."""

from __future__ import annotations

import dataclasses

from ingestor.pipeline import serve
from ingestor.sim.scenario import load_scenario
from ingestor.sim.server import SimServer
from tests.integration.harness import check_exactly_once, make_config, wait_published

DAY = 86400.0


async def test_backfill_under_stripes_default_limits_gets_at_most_one_percent_429s(
    bootstrap: str, topic_prefix: str
) -> None:
    """A v1 + v2 backfill of the platform and two connected accounts (six streams reading in
    parallel slices, plus hydration) against a simulator enforcing a sandbox's limits (25/s
    global, 25/s per operation, concurrency caps) with the client at its defaults for a test
    key: at most 1% of requests are answered 429, and every event arrives exactly once."""
    scenario = dataclasses.replace(
        load_scenario(None),
        history_events=3000,
        history_span_seconds=3 * DAY,
        history_bursts=1,
        burst_size=300,
        v2_share=0.1,
        platform_share=0.5,
        latency_min_ms=5.0,
        latency_max_ms=30.0,
    )
    assert (scenario.rate_limit, scenario.endpoint_rate_limit) == (25.0, 25.0)
    async with SimServer(scenario, seed=41) as server:
        loaded = make_config(
            server.url,
            bootstrap,
            topic_prefix,
            stripe__accounts="all",
            backfill__slice_seconds=6 * 3600,
            # Back to Stripe's defaults for a test key (the harness raises them).
            stripe__rate_limit=0,
            stripe__endpoint_rate_limit=25,
        )
        assert loaded.config.stripe.effective_rate_limit == 25.0
        assert loaded.config.stripe.endpoint_rate_limit == 25.0
        assert await serve(loaded, backfill=True, once=True) == 0
        counters = server.sim.counters()
        truth = server.sim.truth()
    requests = sum(sum(by_status.values()) for by_status in counters.values())
    limited = sum(by_status.get("429", 0) for by_status in counters.values())
    hydrations = sum(
        sum(v.values()) for k, v in counters.items() if k.startswith("GET /v1/") and "{id}" in k
    )
    assert requests >= 200  # enough to run into both limits: several seconds at 25/s
    assert hydrations > 0
    assert limited <= 0.01 * requests, f"{limited} of {requests} requests were 429s: {counters}"
    records = await wait_published(bootstrap, topic_prefix, {t["id"] for t in truth})
    check_exactly_once(records, truth, topic_prefix)
