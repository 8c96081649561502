"""Deploy files: dashboard and alerts only name real metrics; compose validates; image shape."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import yaml

from ingestor.metrics import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "ingestor.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"

METRIC_RE = re.compile(r"\bingestor_[a-z0-9_]+\b")


def exported_names() -> set[str]:
    """Every series name the registry exposes (counters get _total, histograms _bucket...)."""
    names: set[str] = set()
    for metric in REGISTRY.collect():
        names.add(metric.name)
        if metric.type == "counter":
            names |= {f"{metric.name}_total", f"{metric.name}_created"}
        elif metric.type == "histogram":
            names |= {f"{metric.name}_{s}" for s in ("bucket", "sum", "count", "created")}
    return names


def dashboard_exprs() -> list[str]:
    doc = orjson.loads(DASHBOARD.read_bytes())
    return [t["expr"] for p in doc["panels"] for t in p["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_dashboard_is_grafana_json_with_the_required_panels() -> None:
    """A real dashboard: uid, title, panels with Prometheus targets covering each topic."""
    doc = orjson.loads(DASHBOARD.read_bytes())
    assert doc["uid"]
    assert doc["title"]
    assert isinstance(doc["schemaVersion"], int)
    titles = " | ".join(p["title"].lower() for p in doc["panels"])
    for topic in (
        "events published",
        "api requests",
        "429",
        "lag",
        "duplicates",
        "dead-letter",
        "hydration",
        "watermark",
        "backfill progress",
        "ready",
    ):
        assert topic in titles, topic
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        assert panel["targets"], panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])


def test_every_metric_the_dashboard_uses_exists() -> None:
    """No panel queries a metric name the service does not export."""
    names = exported_names()
    used = {m for expr in dashboard_exprs() for m in METRIC_RE.findall(expr)}
    assert used, "dashboard references no metrics"
    assert used <= names, sorted(used - names)


def test_alert_rules_cover_the_failure_modes_and_use_real_metrics() -> None:
    """Rules for lag, DLQ, gap, 429 storm, not ready, no events; each names real metrics."""
    rules = alert_rules()
    names = exported_names()
    by_alert = {r["alert"]: r for r in rules}
    expected = {
        "IngestorHighEventLag": "ingestor_event_lag_seconds_bucket",
        "IngestorDeadLetterGrowth": "ingestor_dlq_events_total",
        "IngestorCursorGap": "ingestor_cursor_gap_alarm",
        "IngestorRateLimitStorm": "ingestor_rate_limited_total",
        "IngestorNotReady": "ingestor_ready",
        "IngestorNoEventsPublished": "ingestor_events_published_total",
    }
    for alert, metric in expected.items():
        assert alert in by_alert, alert
        assert metric in by_alert[alert]["expr"], alert
    for rule in rules:
        used = set(METRIC_RE.findall(rule["expr"]))
        assert used, rule["alert"]
        assert used <= names, (rule["alert"], sorted(used - names))
        assert rule["labels"]["severity"] in {"page", "warn"}
        assert rule["annotations"]["summary"]


def test_compose_file_is_valid_for_docker_compose() -> None:
    """`docker-compose -f compose.yaml config -q` accepts the file (installed here and by CI)."""
    exe = shutil.which("docker-compose")
    assert exe is not None, "docker-compose is not on PATH (.ci/run installs it; apt install it)"
    proc = subprocess.run(
        [exe, "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "STRIPE_API_KEY": ""},
    )
    assert proc.returncode == 0, proc.stderr


def test_compose_needs_nothing_outside_the_repository() -> None:
    """Every volume is a named volume or a path inside the repository, and no service reads a
    host path from its environment: a clone with nothing beside it can `docker compose up`."""
    doc = yaml.safe_load(COMPOSE.read_text())
    named = set(doc.get("volumes") or {})
    for name, service in doc["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source in named:
                continue
            resolved = (ROOT / os.path.expandvars(source)).resolve()
            assert resolved.is_relative_to(ROOT), (name, volume)
        for key, value in (service.get("environment") or {}).items():
            assert "../" not in str(value), (name, key, value)
    assert "../" not in COMPOSE.read_text()


def test_compose_services_wire_kafka_sim_and_ingestor() -> None:
    """kafka (KRaft, single-node transactions), stripe-sim and ingestor with health gating."""
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    kafka = services["kafka"]
    assert kafka["image"] == "apache/kafka:4.1.1"
    env = kafka["environment"]
    assert str(env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"]) == "1"
    assert str(env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"]) == "1"
    assert str(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == "1"
    assert "controller" in env["KAFKA_PROCESS_ROLES"]
    assert "healthcheck" in kafka
    assert any(v.split(":")[0] in doc["volumes"] for v in kafka["volumes"])
    sim = services["stripe-sim"]
    assert sim["command"][:5] == ["sim", "--host", "0.0.0.0", "--port", "12111"]
    assert "healthcheck" in sim
    ing = services["ingestor"]
    assert ing["command"][0] == "run"
    ienv = ing["environment"]
    # The simulator unless the shell names another base (your own account: Stripe's API).
    assert ienv["STRIPE_API_BASE"] == "${STRIPE_API_BASE:-http://stripe-sim:12111}"
    assert ienv["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert ienv["STRIPE_API_KEY"].startswith("${STRIPE_API_KEY")
    assert ing["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "stripe-sim": {"condition": "service_healthy"},
    }
    assert "stop_grace_period" in ing
    assert any(str(p).startswith("8080:") for p in ing["ports"])


def test_dockerfile_runs_unprivileged_with_healthcheck_and_entrypoint() -> None:
    """Slim 3.11 base, non-root USER, config copied, HEALTHCHECK on /healthz, SIGTERM, CLI."""
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user
    assert user[-1] not in {"root", "0"}
    assert "pip install ." in text
    assert re.search(r"^COPY config ", text, re.M)
    assert "INGESTOR_HTTP_HOST=0.0.0.0" in text
    assert re.search(r"^HEALTHCHECK .*", text, re.M)
    assert "/healthz" in text
    healthcheck = text.split("HEALTHCHECK", 1)[1].split("\n\n", 1)[0]
    assert "urllib.request" in healthcheck  # slim images have no curl
    assert "curl " not in healthcheck
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.M)
    assert re.search(r'^ENTRYPOINT \["ingestor"\]$', text, re.M)
    assert re.search(r'^CMD \["run"\]$', text, re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored
    assert ".git" in ignored
