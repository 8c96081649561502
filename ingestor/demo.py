"""`make demo`: simulator + `ingestor run --backfill` with live events, then a per-topic summary."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import orjson

from ingestor.clock import monotonic, wall

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
RUN_SECONDS = float(os.environ.get("DEMO_SECONDS", "25"))
DEMO_KEY = "sk_test_demo_simulator_key"


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


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return orjson.loads(resp.read())


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


def main(argv: Sequence[str] | None = None) -> int:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    prefix = f"demo{int(wall())}"
    sim_port, http_port = free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
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
        print(f"demo: logs in {logs}/ingestor.log; metrics on http://127.0.0.1:{http_port}/metrics")
        ingestor = subprocess.Popen(
            [PYTHON, "-m", "ingestor", "run", "--config", "config/demo.toml", "--backfill"],
            stdout=(logs / "ingestor.log").open("wb"),
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
        started = monotonic()
        while monotonic() - started < RUN_SECONDS:
            if ingestor.poll() is not None:
                tail = (logs / "ingestor.log").read_text(errors="replace").splitlines()[-15:]
                print("\n".join(tail), file=sys.stderr)
                raise SystemExit(f"demo: ingestor exited early with {ingestor.returncode}")
            time.sleep(1)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=5) as r:
                print(f"demo: /readyz -> {r.status}")
        except OSError as exc:
            print(f"demo: /readyz -> {exc}")
        code = stop(ingestor, "ingestor")
        print(f"demo: ingestor stopped on SIGTERM with exit code {code}")
        truth = get_json(f"{sim_url}/_sim/truth")
        assert isinstance(truth, dict)
        print(
            f"demo: the simulator made {truth['count']} events visible so far (live ones keep "
            "coming, some deliberately late; a restart picks them up). Read back from Kafka:"
        )
        summary = subprocess.run(
            [
                PYTHON,
                "-m",
                "ingestor",
                "tail",
                "--bootstrap",
                bootstrap,
                "--prefix",
                prefix,
                "--summary",
                "--max-seconds",
                "60",
            ],
            cwd=ROOT,
            check=False,
        )
        return code or summary.returncode
    finally:
        if ingestor is not None:
            stop(ingestor, "ingestor")
        stop(sim, "simulator")


if __name__ == "__main__":
    sys.exit(main())
