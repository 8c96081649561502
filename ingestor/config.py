"""One frozen, typed configuration: defaults < config file < environment < flags; secrets masked."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from ingestor.errors import ConfigError
from ingestor.route import MAX_PREFIX_LEN
from ingestor.timespec import parse_since

MASK = "********"


class Secret:
    """A string that never shows itself in repr, str, logs or `config show`."""

    __slots__ = ("_value",)

    def __init__(self, value: str = "") -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return f"Secret({MASK!r})" if self._value else "Secret('')"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class StripeConfig:
    api_key: Secret = field(default_factory=Secret)
    api_base: str = "https://api.stripe.com"
    api_version: str = "2026-10-28.endive"
    rate_limit: float = 0.0
    endpoint_rate_limit: float = 25.0
    files_rate_limit: float = 20.0
    concurrency_limit: int = 50
    endpoint_concurrency_limit: int = 25
    accounts: tuple[str, ...] = ()
    # With accounts = "all": seconds between rescans of GET /v1/accounts.
    accounts_rescan_seconds: float = 300.0
    v1: bool = True
    v2: bool = True
    types: tuple[str, ...] = ()
    request_timeout: float = 30.0
    max_retries: int = 8
    backoff_base: float = 0.25
    backoff_max: float = 20.0

    @property
    def live(self) -> bool:
        return self.api_key.reveal().startswith(("sk_live_", "rk_live_"))

    @property
    def sandbox(self) -> bool:
        """A test-mode (sandbox) key: `sk_test_...` or `rk_test_...`."""
        return self.api_key.reveal().startswith(("sk_test_", "rk_test_"))

    @property
    def effective_rate_limit(self) -> float:
        """The global limit: Stripe allows 100 req/s in live mode and 25 in a sandbox."""
        if self.rate_limit > 0:
            return self.rate_limit
        return 25.0 if self.sandbox else 100.0


# kafka.topic_partitions / kafka.topic_replication at this value: the cluster's own default
# (num.partitions, default.replication.factor), read from the broker when topics are created.
BROKER_DEFAULT = 0
_BROKER_DEFAULT_KEYS = ("kafka.topic_partitions", "kafka.topic_replication")


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    bootstrap_servers: str = "localhost:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: Secret = field(default_factory=Secret)
    ssl_cafile: str = ""
    topic_prefix: str = "stripe"
    # 0 (BROKER_DEFAULT): the cluster's num.partitions / default.replication.factor.
    topic_partitions: int = 0
    topic_replication: int = 0
    # Deprecated: the state topic has one partition per shard (`shards`); only 1 or `shards`.
    state_topic_partitions: int = 1
    delivery: Literal["exactly_once", "at_least_once"] = "exactly_once"
    # Shards: partitions of the coordination topic; accounts map to them by a stable hash.
    shards: int = 1
    # The shard a log writes (set per shard by serve(); deprecated as a user setting).
    shard: int = 0
    # Group protocol timeouts: a dead process's shards move after session_timeout; a revoked
    # shard must drain and commit within rebalance_timeout.
    session_timeout: float = 10.0
    rebalance_timeout: float = 30.0
    transactional_id: str = ""
    max_message_bytes: int = 1_000_000
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "zstd"
    firehose: bool = False
    request_timeout: float = 30.0

    @property
    def state_topic(self) -> str:
        return f"{self.topic_prefix}._ingestor_state"

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic_prefix}.dlq"

    @property
    def firehose_topic(self) -> str:
        return f"{self.topic_prefix}.all"

    @property
    def coordination_topic(self) -> str:
        """The topic whose partitions are the shards; its consumer group assigns them."""
        return f"{self.topic_prefix}._ingestor_shards"

    @property
    def group_id(self) -> str:
        return f"ingestor.{self.topic_prefix}"

    @property
    def effective_transactional_id(self) -> str:
        # Derived from the shard, so a second copy of the same shard fences the first.
        if not self.transactional_id:
            return f"ingestor.{self.topic_prefix}.shard-{self.shard}"
        # One shard keeps the override as it was; several need one id each.
        if self.shards == 1:
            return self.transactional_id
        return f"{self.transactional_id}.shard-{self.shard}"


@dataclass(frozen=True, slots=True)
class TailConfig:
    poll_interval: float = 1.0
    overlap_seconds: float = 5.0
    sweep_window_seconds: float = 600.0
    sweep_interval_seconds: float = 60.0
    sweep_budget_share: float = 0.10
    # Share of the global rate (of its current rate, after 429s), within the sweep share, that
    # sweeps get ahead of hydration rather than behind it: 429s that cut the rate while thin
    # events pile up slow the sweeps down but cannot stop them.
    sweep_reserved_share: float = 0.05
    batch_max_events: int = 8000
    # Share of each limiter's rate that idle streams' polls may use together; it sets how
    # far an idle stream's poll interval may grow (streams / (share x rate)).
    idle_budget_share: float = 0.5


@dataclass(frozen=True, slots=True)
class HydrateConfig:
    concurrency: int = 16
    max_attempts: int = 6
    on_failure: Literal["dlq", "publish"] = "dlq"
    budget_share: float = 0.8
    deadline_seconds: float = 60.0
    cache_entries: int = 4096
    cache_bytes: int = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class BackfillConfig:
    since: str = "30d"
    slice_seconds: int = 86400
    concurrency: int = 12
    max_buffered_events: int = 20_000
    tail_during_backfill: bool = False


@dataclass(frozen=True, slots=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """Stripe event destinations pushed to `POST <path>` on a listener of their own."""

    enabled: bool = False
    # Loopback by default, like the ops listener: only the TLS-terminating ingress (a sidecar
    # or the host's proxy) should reach it; the container image sets 0.0.0.0.
    host: str = "127.0.0.1"
    port: int = 8081
    path: str = "/webhooks/stripe"
    # Signing secrets (whsec_...); several while one is being rolled.
    secrets: tuple[Secret, ...] = ()
    tolerance_seconds: float = 300.0
    max_body_bytes: int = 1_048_576
    # How long a delivery waits for its commit before it is answered 503 (Stripe retries).
    ack_timeout_seconds: float = 10.0
    # The tail's poll interval while webhooks are on (pushes bring the latency; polls
    # reconcile, so they can be rarer); 0 keeps tail.poll_interval.
    poll_interval_seconds: float = 5.0
    # strict: a push wakes the stream's poll and is published by it in order (the pushed
    # payload only when that poll did not list it); arrival: published as it arrives.
    order: Literal["strict", "arrival"] = "strict"


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


@dataclass(frozen=True, slots=True)
class AlarmConfig:
    gap_threshold_seconds: float = 7 * 86400.0
    ready_max_poll_age_seconds: float = 60.0
    shutdown_grace_seconds: float = 8.0
    # A stream parked on an error retrying cannot fix (revoked access) is tried this often.
    parked_retry_seconds: float = 600.0


@dataclass(frozen=True, slots=True)
class Config:
    stripe: StripeConfig = field(default_factory=StripeConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    tail: TailConfig = field(default_factory=TailConfig)
    hydrate: HydrateConfig = field(default_factory=HydrateConfig)
    backfill: BackfillConfig = field(default_factory=BackfillConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    log: LogConfig = field(default_factory=LogConfig)
    alarms: AlarmConfig = field(default_factory=AlarmConfig)


SECTIONS: dict[str, Any] = {f.name: globals()[str(f.type)] for f in dataclasses.fields(Config)}

# Well-known environment variables (container conventions) and the key each sets.
NAMED_ENV: dict[str, tuple[str, str]] = {
    "STRIPE_API_KEY": ("stripe", "api_key"),
    "STRIPE_API_BASE": ("stripe", "api_base"),
    "STRIPE_API_VERSION": ("stripe", "api_version"),
    "STRIPE_RATE_LIMIT": ("stripe", "rate_limit"),
    "STRIPE_ACCOUNTS": ("stripe", "accounts"),
    "KAFKA_BOOTSTRAP_SERVERS": ("kafka", "bootstrap_servers"),
    "INGESTOR_TOPIC_PREFIX": ("kafka", "topic_prefix"),
    "INGESTOR_HTTP_HOST": ("http", "host"),
    "INGESTOR_HTTP_PORT": ("http", "port"),
    "STRIPE_WEBHOOK_SECRET": ("webhook", "secrets"),
}
# Secrets mounted as files (Docker/Kubernetes secrets): NAME_FILE holds NAME's value.
FILE_ENV: dict[str, tuple[str, str]] = {
    "STRIPE_API_KEY_FILE": ("stripe", "api_key"),
    "KAFKA_SASL_PASSWORD_FILE": ("kafka", "sasl_password"),
    "STRIPE_WEBHOOK_SECRET_FILE": ("webhook", "secrets"),
}

_TOPIC_LEGAL = re.compile(r"^[A-Za-z0-9._-]+$")
_ACCOUNT = re.compile(r"^acct_[A-Za-z0-9]+$")


def _expected(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if tp is Secret:
        return "a string"
    if tp == tuple[Secret, ...]:
        return "a list of secrets"
    if origin is tuple:
        return "a list of strings"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )


def _coerce(setting: str, tp: Any, value: Any, *, from_text: bool) -> Any:
    """Turns a TOML value (or an env/flag string when from_text) into the field's type."""
    origin = typing.get_origin(tp)
    bad = ConfigError(setting, f"expected {_expected(tp)}, got {value!r}"[:200])
    if tp is Secret:
        if not isinstance(value, str):
            raise ConfigError(setting, f"expected {_expected(tp)}")
        return Secret(value.strip())
    if tp == tuple[Secret, ...]:
        # Never echo the value: an error names the setting only.
        if from_text and isinstance(value, str):
            return _secrets(value)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(setting, f"expected {_expected(tp)}")
        return tuple(Secret(v.strip()) for v in value if v.strip())
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin is tuple:
        if from_text and isinstance(value, str):
            return tuple(p.strip() for p in value.split(",") if p.strip())
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad
        return tuple(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_text and isinstance(value, str) and value.lower() in {"1", "true", "yes", "on"}:
            return True
        if from_text and isinstance(value, str) and value.lower() in {"0", "false", "no", "off"}:
            return False
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if from_text and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise bad from None
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int | float):
            return float(value)
        if from_text and isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise bad  # pragma: no cover - every field type is handled above


def _secrets(text: str) -> tuple[Secret, ...]:
    """Comma- (or newline-) separated secrets, as STRIPE_WEBHOOK_SECRET and its file hold them."""
    return tuple(Secret(p.strip()) for p in re.split(r"[,\n]", text) if p.strip())


@dataclass(frozen=True, slots=True)
class Loaded:
    """The config plus where each key's value came from (for `config show`)."""

    config: Config
    sources: Mapping[str, str]


def _hints(section: str) -> dict[str, Any]:
    return typing.get_type_hints(SECTIONS[section])


def _apply_table(
    values: dict[str, dict[str, Any]],
    sources: dict[str, str],
    table: Mapping[str, Any],
    origin: str,
    *,
    is_defaults: bool = False,
) -> None:
    for section, body in table.items():
        if section not in SECTIONS:
            raise ConfigError(
                section, f"unknown section in {origin} (known: {', '.join(SECTIONS)})"
            )
        if not isinstance(body, dict):
            raise ConfigError(section, f"expected a table in {origin}")
        hints = _hints(section)
        for key, raw in body.items():
            name = f"{section}.{key}"
            if key not in hints:
                raise ConfigError(name, f"unknown key in {origin}")
            values[section][key] = _coerce(name, hints[key], raw, from_text=False)
            # The shipped defaults file restates the code's defaults; only an edited value in
            # it is worth naming as its own source.
            same = is_defaults and values[section][key] == _default(section, key)
            sources[name] = "default" if same else origin


def _default(section: str, key: str) -> Any:
    return getattr(SECTIONS[section](), key)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("--config", f"file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None


def default_config_path() -> Path | None:
    """`config/default.toml` beside the working directory or INGESTOR_CONFIG_DIR, if present."""
    base = os.environ.get("INGESTOR_CONFIG_DIR")
    path = Path(base) / "default.toml" if base else Path("config") / "default.toml"
    return path if path.is_file() else None


def load(
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    *,
    defaults_file: Path | Literal["auto"] | None = "auto",
) -> Loaded:
    """Builds the one Config; raises ConfigError naming the first bad setting."""
    env = os.environ if env is None else env
    values: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    sources: dict[str, str] = {}
    if defaults_file == "auto":
        defaults_file = default_config_path()
    if defaults_file is not None:
        _apply_table(
            values, sources, _read_toml(defaults_file), str(defaults_file), is_defaults=True
        )
    if config_file is not None:
        _apply_table(values, sources, _read_toml(Path(config_file)), str(config_file))
    # Generic form first, so the well-known names (more specific) win.
    for name, raw in sorted(env.items()):
        if not name.startswith("INGESTOR_") or "__" not in name:
            continue
        section, _, key = name[len("INGESTOR_") :].lower().partition("__")
        if section not in SECTIONS or key not in _hints(section):
            raise ConfigError(name, "unknown setting (expected INGESTOR_<SECTION>__<KEY>)")
        values[section][key] = _coerce(name, _hints(section)[key], raw, from_text=True)
        sources[f"{section}.{key}"] = f"env {name}"
    for name, (section, key) in NAMED_ENV.items():
        if name in env:
            values[section][key] = _coerce(name, _hints(section)[key], env[name], from_text=True)
            sources[f"{section}.{key}"] = f"env {name}"
    for name, (section, key) in FILE_ENV.items():
        if name in env:
            try:
                text = Path(env[name]).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(name, f"cannot read secret file: {exc.strerror}") from None
            hint = _hints(section)[key]
            values[section][key] = _secrets(text) if hint == tuple[Secret, ...] else Secret(text)
            sources[f"{section}.{key}"] = f"env {name}"
    for dotted, raw in (flags or {}).items():
        section, _, key = dotted.partition(".")
        if section not in SECTIONS or key not in _hints(section):
            raise ConfigError(dotted, "unknown setting (expected <section>.<key>)")
        # Named by the key, not the flag: `--set` and the named flags reach the same keys.
        values[section][key] = _coerce(dotted, _hints(section)[key], raw, from_text=True)
        sources[dotted] = "flag"
    config = Config(**{s: SECTIONS[s](**v) for s, v in values.items()})
    validate(config)
    return Loaded(config, sources)


def _valid_since(text: str) -> bool:
    """What `--since` accepts (timespec.parse_since, the one parser): a duration or a time."""
    try:
        parse_since(text, 0)
    except ConfigError:
        return False
    return True


def validate(config: Config) -> None:
    """Checks what types alone cannot; one ConfigError naming the setting and what is expected."""
    s, k = config.stripe, config.kafka
    key = s.api_key.reveal()
    if not key:
        raise ConfigError("stripe.api_key", "missing (set STRIPE_API_KEY or STRIPE_API_KEY_FILE)")
    if not key.startswith(("sk_test_", "rk_test_", "sk_live_", "rk_live_")):
        raise ConfigError(
            "stripe.api_key", "expected a secret or restricted key (sk_... or rk_...)"
        )
    url = urlsplit(s.api_base)
    if url.scheme not in {"http", "https"} or not url.hostname:
        raise ConfigError("stripe.api_base", f"expected an http(s) URL, got {s.api_base!r}")
    if s.live and url.scheme != "https":
        raise ConfigError("stripe.api_base", "a live key is only ever sent over https")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}(\.[a-z_]+)?", s.api_version):
        raise ConfigError(
            "stripe.api_version", "expected YYYY-MM-DD.<name>, e.g. 2026-10-28.endive"
        )
    if s.rate_limit < 0:
        raise ConfigError(
            "stripe.rate_limit", "expected a positive number of requests/s (0 = auto)"
        )
    for key in ("endpoint_rate_limit", "files_rate_limit"):
        if not getattr(s, key) > 0:
            raise ConfigError(f"stripe.{key}", "expected a positive number of requests/s")
    for key in ("concurrency_limit", "endpoint_concurrency_limit"):
        if getattr(s, key) < 1:
            raise ConfigError(f"stripe.{key}", "expected at least 1 request in flight")
    if not s.v1 and not s.v2:
        raise ConfigError("stripe.v1", "at least one of stripe.v1 and stripe.v2 must be on")
    for acct in s.accounts:
        if acct != "all" and acct != "platform" and not _ACCOUNT.fullmatch(acct):
            raise ConfigError("stripe.accounts", f"expected acct_... ids or 'all', got {acct!r}")
    if len(s.types) > 20:
        raise ConfigError("stripe.types", "Stripe accepts at most 20 types per filter")
    if s.max_retries < 0 or s.request_timeout <= 0:
        raise ConfigError("stripe.max_retries", "expected max_retries >= 0 and request_timeout > 0")
    servers = [h.strip() for h in k.bootstrap_servers.split(",") if h.strip()]
    if not servers:
        raise ConfigError(
            "kafka.bootstrap_servers", "expected host:port[,host:port...], got nothing"
        )
    for hp in servers:
        host, _, port = hp.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError("kafka.bootstrap_servers", f"expected host:port, got {hp!r}")
    if not _TOPIC_LEGAL.fullmatch(k.topic_prefix) or len(k.topic_prefix) > MAX_PREFIX_LEN:
        raise ConfigError(
            "kafka.topic_prefix",
            f"expected 1-{MAX_PREFIX_LEN} characters of [a-zA-Z0-9._-], e.g. 'stripe'",
        )
    if k.topic_prefix in {".", ".."}:
        raise ConfigError("kafka.topic_prefix", "'.' and '..' are not legal Kafka topic names")
    for name in ("topic_partitions", "topic_replication"):
        if getattr(k, name) < BROKER_DEFAULT:
            raise ConfigError(f"kafka.{name}", "expected >= 1, or 0 for the broker's default")
    if not 1 <= k.shards <= 1024:
        raise ConfigError("kafka.shards", "expected 1-1024 shards")
    if k.state_topic_partitions not in (1, k.shards):
        raise ConfigError(
            "kafka.state_topic_partitions",
            "deprecated: the state topic has one partition per shard (kafka.shards); remove it",
        )
    if not 1 <= k.session_timeout < k.rebalance_timeout:
        raise ConfigError(
            "kafka.session_timeout", "expected 1 <= session_timeout < rebalance_timeout seconds"
        )
    if k.security_protocol.startswith("SASL") and not (k.sasl_mechanism and k.sasl_username):
        raise ConfigError("kafka.sasl_mechanism", "SASL needs sasl_mechanism and sasl_username")
    if k.max_message_bytes < 1024:
        raise ConfigError("kafka.max_message_bytes", "expected at least 1024")
    if k.shard < 0:
        raise ConfigError("kafka.shard", "expected a shard number >= 0")
    t = config.tail
    if t.poll_interval <= 0 or t.overlap_seconds < 0 or t.sweep_window_seconds < 0:
        raise ConfigError("tail.poll_interval", "expected positive durations")
    if not 0 < t.sweep_budget_share <= 1:
        raise ConfigError("tail.sweep_budget_share", "expected a share in (0, 1]")
    if not 0 <= t.sweep_reserved_share <= t.sweep_budget_share:
        raise ConfigError(
            "tail.sweep_reserved_share", "expected a share in [0, tail.sweep_budget_share]"
        )
    if not 0 < t.idle_budget_share <= 1:
        raise ConfigError("tail.idle_budget_share", "expected a share in (0, 1]")
    if s.accounts_rescan_seconds <= 0:
        raise ConfigError("stripe.accounts_rescan_seconds", "expected a positive number of seconds")
    if t.batch_max_events < 1:
        raise ConfigError("tail.batch_max_events", "expected >= 1")
    if config.hydrate.concurrency < 1 or config.hydrate.max_attempts < 1:
        raise ConfigError("hydrate.concurrency", "expected concurrency and max_attempts >= 1")
    if not 0 < config.hydrate.budget_share <= 1:
        raise ConfigError("hydrate.budget_share", "expected a share in (0, 1]")
    if not config.hydrate.deadline_seconds > 0:
        raise ConfigError("hydrate.deadline_seconds", "expected a positive duration")
    if config.hydrate.cache_entries < 0 or config.hydrate.cache_bytes < 0:
        raise ConfigError("hydrate.cache_entries", "expected cache bounds >= 0 (0 = no cache)")
    b = config.backfill
    if not _valid_since(b.since):
        raise ConfigError(
            "backfill.since",
            f"expected a duration like 7d, 12h, 30m or an RFC 3339 time, got {b.since!r}",
        )
    if b.slice_seconds < 1 or b.concurrency < 1 or b.max_buffered_events < 100:
        raise ConfigError("backfill.concurrency", "expected slice_seconds, concurrency >= 1")
    if not 0 <= config.http.port <= 65535:
        raise ConfigError("http.port", f"expected 0-65535, got {config.http.port}")
    if config.alarms.parked_retry_seconds <= 0:
        raise ConfigError("alarms.parked_retry_seconds", "expected a positive duration")
    _validate_webhook(config.webhook)


def _validate_webhook(w: WebhookConfig) -> None:
    # Messages never include a secret's value, not even a prefix of it.
    if w.enabled and not w.secrets:
        raise ConfigError(
            "webhook.secrets",
            "missing while webhook.enabled (set STRIPE_WEBHOOK_SECRET or "
            "STRIPE_WEBHOOK_SECRET_FILE to the endpoint's signing secret)",
        )
    for n, secret in enumerate(w.secrets):
        if not secret.reveal().startswith("whsec_") or len(secret.reveal()) <= len("whsec_"):
            raise ConfigError(
                "webhook.secrets", f"secret #{n + 1} is not a signing secret (expected whsec_...)"
            )
    if not 0 <= w.port <= 65535:
        raise ConfigError("webhook.port", f"expected 0-65535, got {w.port}")
    if not w.path.startswith("/") or any(c in w.path for c in "?# "):
        raise ConfigError(
            "webhook.path", f"expected an absolute path like /webhooks/stripe, got {w.path!r}"
        )
    if not w.tolerance_seconds > 0:
        raise ConfigError("webhook.tolerance_seconds", "expected a positive duration")
    if w.max_body_bytes < 1024:
        raise ConfigError("webhook.max_body_bytes", "expected at least 1024")
    if not w.ack_timeout_seconds > 0:
        raise ConfigError("webhook.ack_timeout_seconds", "expected a positive duration")
    if w.poll_interval_seconds < 0:
        raise ConfigError(
            "webhook.poll_interval_seconds", "expected a duration >= 0 (0 = tail.poll_interval)"
        )


def show(loaded: Loaded) -> list[tuple[str, str, str]]:
    """(key, value, source) rows for `config show`; secrets masked."""
    rows: list[tuple[str, str, str]] = []
    for section in SECTIONS:
        obj = getattr(loaded.config, section)
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, Secret):
                text = MASK if value else "(unset)"
            elif f.type == "tuple[Secret, ...]":
                text = ",".join(MASK for _ in value) if value else "(unset)"
            elif isinstance(value, tuple):
                text = ",".join(value)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            name = f"{section}.{f.name}"
            if name in _BROKER_DEFAULT_KEYS and value == BROKER_DEFAULT:
                text = f"{BROKER_DEFAULT} (broker default)"
            rows.append((name, text, loaded.sources.get(name, "default")))
    return rows


__all__ = ["BROKER_DEFAULT", "Config", "Loaded", "Secret", "load", "show", "validate"]
