"""The contract's JSON Schemas (validated with jsonschema) hold for what the pipeline produced
into the real broker: v1 values, v2 envelopes, headers, firehose copies and both DLQ shapes."""

from __future__ import annotations

from collections import defaultdict

from ingestor.contracts import validate_record
from ingestor.pipeline import serve
from ingestor.sim.server import SimServer
from tests.integration.harness import headers, make_config, sim_scenario, wait_published

ACCOUNT = "acct_1ContractCheck"


async def test_every_record_the_pipeline_published_validates_against_the_schemas(
    bootstrap: str, topic_prefix: str
) -> None:
    """Each record read back read_committed passes `validate_record` (topic, key, headers
    and value against the draft 2020-12 schemas), and every shape of the contract is among
    them: v1 of the platform and of an account, v2 hydrated ok and not_found, firehose
    copies, a dead letter keeping its thin event (hydration_failed) and a too_large summary."""
    scenario = sim_scenario(history_events=0, history_bursts=0, accounts=(ACCOUNT,))
    async with SimServer(scenario, seed=31) as sim:
        s = sim.sim
        ids = s.add_events(3, type="customer.created")
        ids += s.add_events(3, type="charge.succeeded", account=ACCOUNT)
        ids += s.add_events(3, type="v1.charge.succeeded", api="v2")
        customer = next(t["object_id"] for t in s.truth() if t["type"] == "customer.created")
        ids += s.add_events(1, type="v1.customer.deleted", api="v2", object_id=customer)
        poison = s.add_events(1, type="v1.invoice.paid", api="v2")
        s.set_faults(error_500=1.0, fault_paths=["/v1/invoices/"])
        settings: dict[str, str | int | bool] = {
            "stripe__accounts": "all",
            "backfill__since": "1h",
            "kafka__firehose": True,
            "hydrate__max_attempts": 2,
        }
        loaded = make_config(sim.url, bootstrap, topic_prefix, **settings)
        assert await serve(loaded, backfill=True, once=True) == 0
        # A second run on the same state with a small record limit: a charge snapshot
        # (~3 KB) becomes a too_large summary in the DLQ.
        big = s.add_events(1, type="charge.refunded")
        small = make_config(
            sim.url, bootstrap, topic_prefix, **settings, kafka__max_message_bytes=2048
        )
        assert await serve(small, backfill=True, once=True) == 0
    records = await wait_published(bootstrap, topic_prefix, {*ids, *poison, *big})
    # Shape -> event ids (a too-large event with the firehose on has two dead letters, one
    # per record it was routed to).
    shapes: dict[str, set[str]] = defaultdict(set)
    for record in records:
        value = validate_record(record)
        h = headers(record)
        if record.topic.endswith(".all"):
            shape = "firehose"
        elif "dlq_reason" in h:
            shape = f"dlq {h['dlq_reason']} " + ("summary" if "size" in value else "event")
        elif h["source"] == "v2":
            shape = f"v2 {value['hydration']['status']}"
        else:
            shape = "v1 account" if "account" in h else "v1 platform"
        shapes[shape].add(h["event_id"])
    assert {k: len(v) for k, v in shapes.items()} == {
        "v1 platform": 3,
        "v1 account": 3,
        "v2 ok": 3,
        "v2 not_found": 1,
        "dlq hydration_failed event": 1,
        "dlq too_large summary": 1,
        "firehose": 10,
    }, shapes
    assert shapes["dlq hydration_failed event"] == set(poison)
    assert shapes["dlq too_large summary"] == set(big)
