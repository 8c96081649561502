"""Webhook delivery -> 200 latency at a steady delivery rate, into the real broker.

`python -m bench.webhook [--rate 500] [--seconds 20] [--order arrival|strict]`: the simulator
in its own process, `ingestor run` as a subprocess with the webhook on and the poller
running, and this process as Stripe: signed v1 snapshot events POSTed open-loop (one every
1/rate s, whatever the answers) to the receiver. Each delivery's time from request to 200
is measured; 200 means its transaction committed. Afterwards a read_committed consumer
counts what landed: every delivered id exactly once. Prints one line and writes
`bench/results/webhook.json` (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import re
import statistics
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import orjson

from bench.run import (
    RESULTS,
    _free_port,
    _log_tail,
    count_committed,
    ingestor_env,
    spawn_ingestor,
    start_sim,
    stop_sim,
)
from ingestor.signature import sign
from ingestor.sim.scenario import load_scenario

SECRET = "whsec_bench0123456789abcdef"
TARGET_P99_MS = 250.0


def event_body(n: int, run: str) -> tuple[str, bytes]:
    """A v1 snapshot event as Stripe delivers it (about 1 kB, like a small charge event)."""
    event_id = f"evt_{run}{n:010d}"
    body = {
        "id": event_id,
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": int(time.time()),
        "data": {
            "object": {
                "id": f"ch_{run}{n % 5000:010d}",
                "object": "charge",
                "amount": 1000 + n % 997,
                "currency": "usd",
                "status": "succeeded",
                "metadata": {"order": str(n)},
                "description": "x" * 600,
            }
        },
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": "charge.updated",
    }
    return event_id, orjson.dumps(body)


async def deliver_all(
    url: str, rate: float, seconds: float, session: aiohttp.ClientSession
) -> tuple[list[float], dict[int, int], list[str]]:
    """Open-loop deliveries; (latencies of the 200s in ms, statuses, ids answered 200)."""
    run = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    ok_ids: list[str] = []

    async def one(n: int) -> None:
        event_id, body = event_body(n, run)
        headers = {"Stripe-Signature": sign(body, SECRET, int(time.time()))}
        started = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                status = r.status
        except aiohttp.ClientError:
            status = 0
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200:
            latencies.append((time.perf_counter() - started) * 1000)
            ok_ids.append(event_id)

    total = int(rate * seconds)
    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for n in range(total):
            due = start + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tg.create_task(one(n))
    return latencies, statuses, ok_ids


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench(args: argparse.Namespace) -> dict[str, object]:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    prefix = f"benchwh{uuid.uuid4().hex[:8]}"
    port = _free_port()
    ops_port = _free_port()
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_path = RESULTS / "webhook-ingestor.log"
    scenario = dataclasses.replace(
        load_scenario(None), history_events=0, history_bursts=0, live_rate=0.0, accounts=()
    )
    # Keep-alive connections, as a sender of hundreds of requests a second keeps them; more
    # requests than connections wait in the client, and that wait counts in the latency.
    connector = aiohttp.TCPConnector(limit=args.connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        sim = await start_sim(scenario, 1, session)
        env = ingestor_env(
            sim,
            bootstrap,
            prefix,
            ops_port,
            {
                "INGESTOR_WEBHOOK__ENABLED": "true",
                "INGESTOR_WEBHOOK__PORT": str(port),
                "INGESTOR_WEBHOOK__ORDER": args.order,
                "STRIPE_WEBHOOK_SECRET": SECRET,
                "INGESTOR_STRIPE__V2": "false",
                "INGESTOR_LOG__LEVEL": "warning",
            },
        )
        url = f"http://127.0.0.1:{port}/webhooks/stripe"
        with log_path.open("wb") as log:
            proc = await spawn_ingestor([], env, log)
            try:
                await _wait_ready(session, url, proc)
                cpu_before = _cpu_seconds(proc.pid)
                latencies, statuses, ok_ids = await deliver_all(
                    url, args.rate, args.seconds, session
                )
                cpu = _cpu_seconds(proc.pid) - cpu_before
                async with session.get(f"http://127.0.0.1:{ops_port}/metrics") as r:
                    metrics_text = await r.text()
            finally:
                proc.terminate()
                code = await proc.wait()
        stop_sim(sim)
    if code != 0:
        raise RuntimeError(f"ingestor exited {code}:\n" + _log_tail(log_path))
    records, unique = await count_committed(bootstrap, prefix)
    return {
        "rate": args.rate,
        "seconds": args.seconds,
        "order": args.order,
        "deliveries": sum(statuses.values()),
        "statuses": {str(k): v for k, v in statuses.items()},
        "p50_ms": round(quantile(latencies, 0.5), 1) if latencies else None,
        "p99_ms": round(quantile(latencies, 0.99), 1) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
        # The receiver's own request -> response time (its histogram's bucket bounds): what
        # the ingestor adds, without the sending side's queueing on a loaded machine.
        "server_p50_ms": _bucket_quantile(metrics_text, 0.5) * 1000,
        "server_p99_ms": _bucket_quantile(metrics_text, 0.99) * 1000,
        "answered_200": len(ok_ids),
        # CPU the ingestor spent per 1,000 deliveries: what the machine's load cannot skew.
        "ingestor_cpu_s_per_1000": round(cpu / max(1, len(ok_ids)) * 1000, 3),
        "committed_records": records,
        "committed_unique": unique,
        "target_p99_ms": TARGET_P99_MS,
    }


def _bucket_quantile(text: str, q: float) -> float:
    """Upper bound of the bucket of `ingestor_webhook_latency_seconds{status="200"}` that
    holds quantile q."""
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        m = re.match(
            r'ingestor_webhook_latency_seconds_bucket\{le="([^"]+)",status="200"\} (\S+)', line
        )
        if m:
            buckets.append((float(m.group(1)), float(m.group(2))))
    count = buckets[-1][1] if buckets else 0.0
    for bound, cumulative in buckets:
        if cumulative >= q * count:
            return bound
    return float("inf")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _wait_ready(
    session: aiohttp.ClientSession, url: str, proc: asyncio.subprocess.Process
) -> None:
    """Until the receiver answers and Kafka is restored (an unsigned POST gets 400 once it
    listens; a signed empty-history delivery would be published, so none is sent)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"ingestor exited {proc.returncode} during start-up")
        try:
            async with session.post(url, data=b"{}") as r:
                if r.status == 400:
                    await asyncio.sleep(2.0)  # state restore and the first poll
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.25)
    raise RuntimeError("webhook receiver did not come up within 60 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="deliveries per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--order", choices=["arrival", "strict"], default="arrival")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    args = parser.parse_args(argv)
    result = asyncio.run(bench(args))
    (RESULTS / "webhook.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(
        f"webhook delivery -> 200 at {result['rate']:g}/s ({result['order']}): "
        f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms (target <= {TARGET_P99_MS:g}); "
        f"receiver p50 <= {result['server_p50_ms']:g} ms, p99 <= {result['server_p99_ms']:g} ms; "
        f"statuses {result['statuses']}; committed {result['committed_unique']} unique of "
        f"{result['answered_200']} answered 200 ({result['committed_records']} records); "
        f"ingestor CPU {result['ingestor_cpu_s_per_1000']} s per 1,000 deliveries"
    )
    ok = result["answered_200"] == result["committed_unique"] == result["committed_records"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["bench", "main"]
