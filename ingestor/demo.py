"""`make demo`: simulator + `ingestor run --backfill` with live events, then a check of what
landed in Kafka against the simulator's ground truth, in one line."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ingestor import kafka_tail
from ingestor.clock import monotonic, wall

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
RUN_SECONDS = float(os.environ.get("DEMO_SECONDS", "25"))
DEMO_KEY = "sk_test_demo_simulator_key"
DEMO_CONFIG = ROOT / "config" / "demo.toml"
LIVE_EVENTS = 5
# After live traffic stops, how long the ingestor may take to publish what was visible by
# then: late events (up to 30 s behind, see ingestor/sim/demo.toml) come in with the sweep.
SETTLE_SECONDS = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, deadline: float) -> None:
    while monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"demo: {url} did not answer in time")


def get_json(url: str, body: Mapping[str, Any] | None = None) -> Any:
    data = None if body is None else orjson.dumps(body)
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    with urllib.request.urlopen(request, timeout=30) as resp:
        return orjson.loads(resp.read())


def metric(url: str, name: str) -> float | None:
    """One unlabelled sample from a Prometheus text page (None when absent or unreachable)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def stop(proc: subprocess.Popen[bytes], name: str, timeout: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"demo: {name} ignored SIGTERM for {timeout:.0f}s; killing it", file=sys.stderr)
            proc.kill()
            proc.wait()
    return proc.returncode


@dataclass(frozen=True, slots=True)
class Landed:
    """An event record read back from Kafka: where it is and which event it carries."""

    topic: str
    partition: int
    key: bytes | None
    event_id: str


def read_back(bootstrap: str, prefix: str) -> list[Landed]:
    """Every committed record under the prefix (read_committed, as `ingestor tail` reads),
    except the firehose copies."""
    landed: list[Landed] = []

    def on_record(record: Any) -> None:
        if record.topic == f"{prefix}.all":
            return
        event_id = next((v.decode() for k, v in record.headers if k == "event_id"), "")
        landed.append(Landed(record.topic, record.partition, record.key, event_id))

    asyncio.run(kafka_tail.read_all(bootstrap, prefix, on_record, max_seconds=120))
    return landed


@dataclass(frozen=True, slots=True)
class Verdict:
    expected: int
    published: int
    missing: int
    duplicated: int
    out_of_order: int
    unknown: int  # published events the simulator never made
    dead_lettered: int
    after: int  # published events that became visible after the count was taken

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.out_of_order or self.unknown)

    def line(self) -> str:
        text = (
            f"demo: events expected {self.expected}, published {self.published}, "
            f"missing {self.missing}, duplicated {self.duplicated}, "
            f"out of order {self.out_of_order}"
        )
        if self.unknown:
            text += f", not in the ground truth {self.unknown}"
        notes = []
        if self.dead_lettered:
            notes.append(f"{self.dead_lettered} of them in the DLQ")
        if self.after:
            notes.append(f"{self.after} more that became visible after the count")
        if notes:
            text += f" ({'; '.join(notes)})"
        return text + (": OK" if self.ok else ": WRONG")


def judge(
    landed: Sequence[Landed],
    expected_ids: set[str],
    truth: Sequence[Mapping[str, Any]],
    prefix: str,
    overlap_ms: int,
) -> Verdict:
    """Compares what landed with the ground truth.

    Expected: the events visible when live traffic stopped. Duplicated: records beyond the
    first of an event (its topic and the DLQ together count too). Out of order: within one
    (topic, partition, key), an event after a newer one, by (created, Stripe's list order);
    an event Stripe showed later than the tail's overlap is exempt, as the contract allows.
    """
    by_id = {t["id"]: t for t in truth}
    counts = Counter(r.event_id for r in landed)
    dlq = {r.event_id for r in landed if r.topic == f"{prefix}.dlq"}
    published = expected_ids & counts.keys()
    seqs: dict[tuple[str, int, bytes | None], list[Mapping[str, Any]]] = defaultdict(list)
    for r in landed:
        t = by_id.get(r.event_id)
        if t is not None and r.topic != f"{prefix}.dlq":
            seqs[(r.topic, r.partition, r.key)].append(t)
    out_of_order = 0
    for seq in seqs.values():
        newest: tuple[int, int] | None = None
        for t in seq:
            if t["visible_ms"] - t["created_ms"] > overlap_ms:
                continue
            order = (t["created_ms"], t["serial"])
            if newest is not None and order < newest:
                out_of_order += 1
            newest = order if newest is None else max(newest, order)
    return Verdict(
        expected=len(expected_ids),
        published=len(published),
        missing=len(expected_ids - counts.keys()),
        duplicated=sum(n - 1 for n in counts.values()),
        out_of_order=out_of_order,
        unknown=len(counts.keys() - by_id.keys()),
        dead_lettered=len(dlq & expected_ids),
        after=len((counts.keys() & by_id.keys()) - expected_ids),
    )


def show_live_events(bootstrap: str, prefix: str) -> None:
    """`ingestor tail --follow` until it has printed LIVE_EVENTS lines, its output as is."""
    print(
        f"demo: {LIVE_EVENTS} live events, as `ingestor tail --follow --format text` prints them:"
    )
    sys.stdout.flush()
    subprocess.run(
        [
            PYTHON,
            "-m",
            "ingestor",
            "tail",
            "--bootstrap",
            bootstrap,
            "--prefix",
            prefix,
            "--follow",
            "--limit",
            str(LIVE_EVENTS),
            "--format",
            "text",
            "--max-seconds",
            "20",
        ],
        cwd=ROOT,
        check=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    prefix = f"demo{int(wall())}"
    sim_port, http_port = free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    metrics_url = f"http://127.0.0.1:{http_port}/metrics"
    overlap_ms = int(tomllib.loads(DEMO_CONFIG.read_text())["tail"]["overlap_seconds"] * 1000)
    logs = ROOT / ".demo"
    logs.mkdir(exist_ok=True)
    print(f"demo: Stripe simulator (scenario 'demo') on {sim_url}")
    sim = subprocess.Popen(
        [PYTHON, "-m", "ingestor", "sim", "--port", str(sim_port), "--scenario", "demo"],
        stdout=(logs / "sim.log").open("wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    ingestor: subprocess.Popen[bytes] | None = None
    try:
        wait_http(f"{sim_url}/_sim/config", monotonic() + 60)
        env = {
            **os.environ,
            "STRIPE_API_KEY": DEMO_KEY,
            "STRIPE_API_BASE": sim_url,
            "STRIPE_ACCOUNTS": "all",
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "INGESTOR_TOPIC_PREFIX": prefix,
            "INGESTOR_HTTP_PORT": str(http_port),
            "INGESTOR_LOG__FORMAT": "json",
        }
        print(f"demo: ingestor run --backfill for {RUN_SECONDS:.0f}s, topics under '{prefix}.'")
        print(f"demo: logs in {logs}/ingestor.log; metrics on {metrics_url}")
        ingestor = subprocess.Popen(
            [PYTHON, "-m", "ingestor", "run", "--config", str(DEMO_CONFIG), "--backfill"],
            stdout=(logs / "ingestor.log").open("wb"),
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
        started = monotonic()

        def alive() -> None:
            assert ingestor is not None
            if ingestor.poll() is not None:
                tail = (logs / "ingestor.log").read_text(errors="replace").splitlines()[-15:]
                print("\n".join(tail), file=sys.stderr)
                raise SystemExit(f"demo: ingestor exited early with {ingestor.returncode}")

        # The live events are shown once the history is in, so they are live ones.
        while (metric(metrics_url, "ingestor_backfill_progress_ratio") or 0) < 1:
            alive()
            if monotonic() - started > 120:
                raise SystemExit("demo: the backfill did not finish within 120 s")
            time.sleep(0.5)
        print(f"demo: backfill done after {monotonic() - started:.1f}s; tailing live")
        show_live_events(bootstrap, prefix)
        while monotonic() - started < RUN_SECONDS:
            alive()
            time.sleep(0.5)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=5) as r:
                print(f"demo: /readyz -> {r.status}")
        except OSError as exc:
            print(f"demo: /readyz -> {exc}")
        # Stop live traffic, then count: every event visible now must land in Kafka.
        get_json(f"{sim_url}/_sim/config", {"live_rate": 0})
        expected = {t["id"] for t in get_json(f"{sim_url}/_sim/truth")["events"]}
        print(
            f"demo: live traffic stopped with {len(expected)} events visible; waiting up to "
            f"{SETTLE_SECONDS:.0f}s for the ingestor to publish them (late ones come with the "
            "sweep)"
        )
        deadline = monotonic() + SETTLE_SECONDS
        while not expected <= {r.event_id for r in read_back(bootstrap, prefix)}:
            alive()
            if monotonic() > deadline:
                break
            time.sleep(2)
        code = stop(ingestor, "ingestor")
        print(f"demo: ingestor stopped on SIGTERM with exit code {code}")
        truth = get_json(f"{sim_url}/_sim/truth")["events"]
        verdict = judge(read_back(bootstrap, prefix), expected, truth, prefix, overlap_ms)
        print(f"demo: per-topic counts: ingestor tail --prefix {prefix} --summary")
        print(verdict.line())
        return code or (0 if verdict.ok else 1)
    finally:
        if ingestor is not None:
            stop(ingestor, "ingestor")
        stop(sim, "simulator")


if __name__ == "__main__":
    sys.exit(main())
