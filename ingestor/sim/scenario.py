"""Scenario: the simulator's seeded, reproducible knobs, loaded from TOML (`sim/*.toml`)."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_SCENARIO = HERE / "default.toml"


@dataclass(frozen=True, slots=True)
class Faults:
    """Per-request probabilities of each failure Stripe (or the network) can produce."""

    error_500: float = 0.0
    error_503_html: float = 0.0
    conflict_409: float = 0.0
    reset: float = 0.0
    truncate: float = 0.0
    stall: float = 0.0
    stall_seconds: float = 30.0

    def total(self) -> float:
        return (
            self.error_500
            + self.error_503_html
            + self.conflict_409
            + self.reset
            + self.truncate
            + self.stall
        )


Weights = tuple[tuple[str, float], ...]
DESTINATION_KINDS = ("snapshot", "thin")


@dataclass(frozen=True, slots=True)
class Destination:
    """A webhook endpoint the simulator pushes events to, as a Stripe event destination does.

    `kind` "snapshot" gets every v1 event as Stripe's v1 event JSON; "thin" gets every v2
    event as a `v2.core.event` notification. Each delivery is signed with `secret`. A failed
    attempt (non-2xx, timeout, connection error) is retried after `backoff_initial_seconds`
    doubling up to `backoff_max_seconds` (with seeded jitter), `max_attempts` in all. Faults,
    each a seeded probability per event: `duplicate_share` delivers it a second time (within
    `duplicate_window_seconds`), `reorder_share` holds it for up to `reorder_window_seconds`
    so later events overtake it, `late_share` delays it by `late_min_seconds` to
    `late_max_seconds`.
    """

    url: str
    secret: str
    kind: str = "snapshot"
    max_attempts: int = 8
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 3600.0
    timeout_seconds: float = 10.0
    concurrency: int = 16
    duplicate_share: float = 0.0
    duplicate_window_seconds: float = 5.0
    reorder_share: float = 0.0
    reorder_window_seconds: float = 2.0
    late_share: float = 0.0
    late_min_seconds: float = 5.0
    late_max_seconds: float = 60.0

    def __post_init__(self) -> None:
        problems = []
        if not self.url.startswith(("http://", "https://")):
            problems.append("url must be http(s)://...")
        if not self.secret.strip():
            problems.append("secret must not be blank")
        if self.kind not in DESTINATION_KINDS:
            problems.append(f"kind must be one of {DESTINATION_KINDS}")
        if self.max_attempts < 1 or self.concurrency < 1:
            problems.append("max_attempts and concurrency must be >= 1")
        if not 0 < self.backoff_initial_seconds <= self.backoff_max_seconds:
            problems.append("need 0 < backoff_initial_seconds <= backoff_max_seconds")
        if self.timeout_seconds <= 0:
            problems.append("timeout_seconds must be > 0")
        for name in ("duplicate_share", "reorder_share", "late_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be within [0, 1]")
        if self.duplicate_window_seconds < 0 or self.reorder_window_seconds < 0:
            problems.append("windows must be >= 0")
        if not 0 <= self.late_min_seconds <= self.late_max_seconds:
            problems.append("need 0 <= late_min_seconds <= late_max_seconds")
        if problems:
            # The secret is never part of the message.
            raise ValueError(f"webhook destination {self.url!r}: " + "; ".join(problems))

    def __repr__(self) -> str:
        return f"Destination(url={self.url!r}, kind={self.kind!r}, secret=********)"


def destination_from_mapping(data: dict[str, Any]) -> Destination:
    """A Destination from a TOML/JSON table; unknown keys are an error."""
    known = {f.name for f in dataclasses.fields(Destination)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"webhook destination: unknown keys {unknown}")
    values = dict(data)
    for f in dataclasses.fields(Destination):
        if f.name in values and f.type in ("float", float):
            values[f.name] = float(values[f.name])
    return Destination(**values)


@dataclass(frozen=True, slots=True)
class Scenario:
    """Every knob of a simulated Stripe account; see default.toml for what each one means."""

    name: str = "default"
    start_time: float = 0.0
    api_version: str = "2026-10-28.endive"
    history_events: int = 2000
    history_span_seconds: float = 3 * 86400.0
    history_bursts: int = 1
    burst_size: int = 250
    v2_share: float = 0.12
    v1_types: Weights = (("charge.succeeded", 1.0),)
    v2_types: Weights = (("v1.charge.succeeded", 1.0),)
    accounts: tuple[str, ...] = ()
    platform_share: float = 1.0
    events_per_object: float = 3.0
    metadata_padding_bytes: int = 0
    slim_objects: bool = False
    live_rate: float = 0.0
    live_burst_interval_seconds: float = 0.0
    late_share: float = 0.0
    lag_min_seconds: float = 5.0
    lag_max_seconds: float = 60.0
    retention_days: float = 30.0
    rate_limit: float = 0.0
    endpoint_rate_limit: float = 0.0
    concurrency_limit: int = 0
    endpoint_concurrency_limit: int = 0
    latency_min_ms: float = 0.0
    latency_max_ms: float = 0.0
    faults: Faults = field(default_factory=Faults)
    stripe_fixtures: str = ""
    webhooks: tuple[Destination, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        for name in ("v2_share", "platform_share", "late_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be within [0, 1]")
        if self.history_events < 0 or self.history_bursts < 0 or self.burst_size < 0:
            problems.append("history_events, history_bursts and burst_size must be >= 0")
        if self.history_span_seconds <= 0 or self.retention_days <= 0:
            problems.append("history_span_seconds and retention_days must be > 0")
        if self.events_per_object < 1:
            problems.append("events_per_object must be >= 1")
        if self.lag_min_seconds < 0 or self.lag_max_seconds < self.lag_min_seconds:
            problems.append("need 0 <= lag_min_seconds <= lag_max_seconds")
        if self.latency_min_ms < 0 or self.latency_max_ms < self.latency_min_ms:
            problems.append("need 0 <= latency_min_ms <= latency_max_ms")
        if self.live_rate < 0 or self.rate_limit < 0 or self.endpoint_rate_limit < 0:
            problems.append("live_rate, rate_limit and endpoint_rate_limit must be >= 0")
        if self.concurrency_limit < 0 or self.endpoint_concurrency_limit < 0:
            problems.append("concurrency_limit and endpoint_concurrency_limit must be >= 0")
        if not self.v1_types or not self.v2_types:
            problems.append("v1_types and v2_types need at least one type each")
        if any(w < 0 for _, w in self.v1_types + self.v2_types):
            problems.append("type weights must be >= 0")
        if not all(a.startswith("acct_") for a in self.accounts):
            problems.append("accounts must be acct_... ids")
        if self.faults.total() > 1.0:
            problems.append("fault probabilities add up to more than 1")
        if problems:
            raise ValueError(f"scenario {self.name!r}: " + "; ".join(problems))


def _weights(value: Any, key: str) -> Weights:
    if isinstance(value, dict):
        return tuple((str(k), float(v)) for k, v in value.items())
    if isinstance(value, list):
        return tuple((str(v), 1.0) for v in value)
    raise ValueError(f"scenario: {key} must be a table of type = weight, or a list of types")


def from_mapping(data: dict[str, Any], *, name: str = "custom") -> Scenario:
    """A Scenario from a TOML-shaped mapping; unknown keys are an error, not silently ignored."""
    known = {f.name for f in dataclasses.fields(Scenario)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"scenario {name!r}: unknown keys {unknown}")
    values: dict[str, Any] = {"name": name, **data}
    for key in ("v1_types", "v2_types"):
        if key in values:
            values[key] = _weights(values[key], key)
    if "accounts" in values:
        values["accounts"] = tuple(values["accounts"])
    if "webhooks" in values:
        tables = values["webhooks"]
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise ValueError(f"scenario {name!r}: webhooks must be an array of tables")
        values["webhooks"] = tuple(destination_from_mapping(t) for t in tables)
    if "faults" in values:
        fault_keys = {f.name for f in dataclasses.fields(Faults)}
        bad = sorted(set(values["faults"]) - fault_keys)
        if bad:
            raise ValueError(f"scenario {name!r}: unknown fault keys {bad}")
        values["faults"] = Faults(**{k: float(v) for k, v in values["faults"].items()})
    for f in dataclasses.fields(Scenario):
        if f.name in values and f.type in ("float", float):
            values[f.name] = float(values[f.name])
    return Scenario(**values)


def load_scenario(path: str | Path | None) -> Scenario:
    """Reads a scenario TOML file over the shipped default (keys it omits keep default.toml's
    values); None -> the default itself. A bare name (`demo`) picks the shipped file."""
    if path is None:
        path = DEFAULT_SCENARIO
    p = Path(path)
    if not p.is_file() and (HERE / f"{p.name}.toml").is_file():
        p = HERE / f"{p.name}.toml"
    with p.open("rb") as fh:
        data = tomllib.load(fh)
    if p.resolve() != DEFAULT_SCENARIO:
        # Other scenarios only state what differs from the default.
        with DEFAULT_SCENARIO.open("rb") as fh:
            base = tomllib.load(fh)
        faults = {**base.get("faults", {}), **data.get("faults", {})}
        data = {**base, **data, "faults": faults}
        data.pop("name", None)
    return from_mapping(data, name=str(data.pop("name", p.stem)))
