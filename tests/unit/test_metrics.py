"""Metrics: labelled counters whose label values are known are exported at 0 from the start."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ingestor import metrics, retry

ROOT = Path(__file__).resolve().parents[2]
# counter variable -> (label, declared values)
KNOWN = {
    "DLQ_EVENTS": ("reason", metrics.DLQ_REASONS),
    "TRANSACTIONS": ("outcome", metrics.TRANSACTION_OUTCOMES),
    "HYDRATION_REQUESTS": ("result", metrics.HYDRATION_RESULTS),
    "API_RETRIES": ("reason", metrics.RETRY_REASONS),
    "DUPLICATES_SKIPPED": ("source", metrics.APIS),
}


def test_a_fresh_process_exports_every_known_series_at_zero() -> None:
    """Before anything happens, /metrics already holds e.g. ingestor_dlq_events_total{reason=
    "too_large"} 0, for every declared label value, so increase() alerts see the first event."""
    code = (
        "from prometheus_client import generate_latest; from ingestor.metrics import REGISTRY;"
        "print(generate_latest(REGISTRY).decode())"
    )
    text = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    for var, (label, values) in KNOWN.items():
        name = getattr(metrics, var)._name + "_total"
        for value in values:
            assert samples.get((name, ((label, value),))) == 0.0, (name, value)


def test_every_label_value_the_code_uses_is_declared() -> None:
    """Each literal label value passed to these counters anywhere in the package, and each
    reason retry.retry_reason can report, is in the declared tuple (so it, too, starts at 0)."""
    used: dict[str, set[str]] = {var: set() for var in KNOWN}
    pattern = re.compile(r"\b(" + "|".join(KNOWN) + r')\.labels\((\w+)="([^"]+)"\)')
    for path in (ROOT / "ingestor").rglob("*.py"):
        for var, label, value in pattern.findall(path.read_text(encoding="utf-8")):
            assert label == KNOWN[var][0], (path, var, label)
            used[var].add(value)
    reasons = re.findall(r'return "(\w+)"', inspect.getsource(retry.retry_reason))
    used["API_RETRIES"] |= set(reasons)
    for var, values in used.items():
        assert values <= set(KNOWN[var][1]), (var, sorted(values - set(KNOWN[var][1])))
    assert used["DLQ_EVENTS"] == {"too_large", "hydration_failed"}
    assert used["TRANSACTIONS"] == {"committed", "aborted"}
