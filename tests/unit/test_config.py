"""Config: default.toml restates the code's defaults; precedence and sources; validation."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from ingestor import config
from ingestor.errors import ConfigError
from ingestor.timespec import parse_since

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TOML = ROOT / "config" / "default.toml"
DEMO_TOML = ROOT / "config" / "demo.toml"
KEY = "sk_test_51ConfigTestKey"


def test_default_toml_loads_to_exactly_the_dataclass_defaults() -> None:
    """Loading only default.toml (plus a key) gives the same Config as the code's defaults."""
    loaded = config.load(env={"STRIPE_API_KEY": KEY}, defaults_file=DEFAULT_TOML)
    expected = config.Config(stripe=config.StripeConfig(api_key=config.Secret(KEY)))
    assert loaded.config == expected


def test_default_toml_values_equal_dataclass_defaults_key_by_key() -> None:
    """Each value written in default.toml equals the field's default (no silent drift)."""
    table = tomllib.loads(DEFAULT_TOML.read_text())
    for section, body in table.items():
        defaults = config.SECTIONS[section]()
        for key, value in body.items():
            default = getattr(defaults, key)
            if isinstance(default, tuple):
                default = list(default)
            assert value == default, f"{section}.{key}: file {value!r} != code {default!r}"


def test_every_config_field_appears_in_default_toml_with_a_comment() -> None:
    """Every key of every section is in default.toml (secrets commented out), under a comment."""
    lines = DEFAULT_TOML.read_text().splitlines()
    text = "\n".join(lines)
    for section, cls in config.SECTIONS.items():
        assert f"[{section}]" in text, section
        body = text.split(f"[{section}]", 1)[1].split("\n[", 1)[0].splitlines()
        for f in dataclasses.fields(cls):
            secret = f.type in ("Secret", config.Secret, "tuple[Secret, ...]")
            pattern = rf"^# {f.name} = " if secret else rf"^{f.name} = "
            idx = next((i for i, ln in enumerate(body) if re.match(pattern, ln)), None)
            assert idx is not None, f"{section}.{f.name} missing from default.toml"
            # The line above is a comment (or another key of the same commented group).
            above = [ln for ln in body[:idx] if ln.strip()]
            assert above, f"{section}.{f.name} has no comment above it"
            assert above[-1].startswith("#") or re.match(r"^\w+ = ", above[-1])
    assert not re.search(r"^\s*(api_key|sasl_password|secrets)\s*=", text, re.M), (
        "secret set in file"
    )


def test_demo_toml_is_valid_and_points_at_the_simulator() -> None:
    """demo.toml loads with a test key from env and uses the local simulator and broker."""
    loaded = config.load(DEMO_TOML, env={"STRIPE_API_KEY": KEY}, defaults_file=DEFAULT_TOML)
    c = loaded.config
    assert c.stripe.api_base == "http://127.0.0.1:12111"
    assert c.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert c.kafka.topic_partitions <= 3
    assert c.tail.poll_interval < config.TailConfig().poll_interval
    assert "api_key" not in DEMO_TOML.read_text().replace("# ", "")


def test_sources_name_default_file_env_and_flag(tmp_path: Path) -> None:
    """Each key's source: default, the --config file, the env variable, or a flag."""
    f = tmp_path / "c.toml"
    f.write_text('[kafka]\ntopic_prefix = "fromfile"\nshard = 1\n')
    loaded = config.load(
        f,
        env={"STRIPE_API_KEY": KEY, "INGESTOR_KAFKA__SHARD": "2"},
        flags={"http.port": "0"},
        defaults_file=DEFAULT_TOML,
    )
    src = loaded.sources
    assert src["kafka.topic_prefix"] == str(f)
    assert src["kafka.shard"] == "env INGESTOR_KAFKA__SHARD"
    assert src["stripe.api_key"] == "env STRIPE_API_KEY"
    assert src["http.port"] == "flag"
    rows = {k: s for k, _, s in config.show(loaded)}
    assert rows["tail.poll_interval"] == "default"
    assert loaded.config.kafka.shard == 2
    assert loaded.config.http.port == 0


def test_edited_default_file_value_is_named_by_its_path(tmp_path: Path) -> None:
    """A defaults file that changes a value shows its path as the source, not 'default'."""
    d = tmp_path / "default.toml"
    d.write_text("[tail]\npoll_interval = 2.5\nbatch_max_events = 8000\n")
    loaded = config.load(env={"STRIPE_API_KEY": KEY}, defaults_file=d)
    assert loaded.sources["tail.poll_interval"] == str(d)
    assert loaded.sources["tail.batch_max_events"] == "default"


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    """flags > env > --config file > defaults."""
    f = tmp_path / "c.toml"
    f.write_text('[log]\nlevel = "warning"\n[http]\nport = 9000\n[kafka]\ntopic_prefix = "f"\n')
    env = {"STRIPE_API_KEY": KEY, "INGESTOR_LOG__LEVEL": "error", "INGESTOR_HTTP_PORT": "9001"}
    loaded = config.load(f, env=env, flags={"log.level": "debug"}, defaults_file=None)
    assert loaded.config.log.level == "debug"
    assert loaded.config.http.port == 9001
    assert loaded.config.kafka.topic_prefix == "f"


@pytest.mark.parametrize("since", ["30d", "12h", "90m", "3600s", "2w", "2026-01-02T03:04:05Z"])
def test_backfill_since_accepts_durations_and_rfc3339(since: str) -> None:
    """backfill.since takes a duration back from now or an absolute time."""
    loaded = config.load(
        env={"STRIPE_API_KEY": KEY}, flags={"backfill.since": since}, defaults_file=None
    )
    assert loaded.config.backfill.since == since


def test_backfill_since_rejects_garbage() -> None:
    """A since that is neither a duration nor a time is a config error naming backfill.since."""
    with pytest.raises(ConfigError) as info:
        config.load(
            env={"STRIPE_API_KEY": KEY}, flags={"backfill.since": "last week"}, defaults_file=None
        )
    assert info.value.setting == "backfill.since"


@pytest.mark.parametrize(
    "since",
    ["7d", " 12 h ", "1.5d", "2026-01-02", "2026-01-02T03:04:05+02:00", "", "7 days", "-3d", "d"],
)
def test_config_accepts_exactly_the_since_values_the_run_can_parse(since: str) -> None:
    """One parser: backfill.since is valid in the config iff timespec.parse_since reads it, so
    a value the config accepted never fails later when the backfill starts."""
    try:
        parse_since(since, 1_767_225_600_000)
        parses = True
    except ConfigError:
        parses = False
    problem: ConfigError | None = None
    try:
        config.load(
            env={"STRIPE_API_KEY": KEY}, flags={"backfill.since": since}, defaults_file=None
        )
    except ConfigError as exc:
        problem = exc
    assert (problem is None) == parses
    assert problem is None or problem.setting == "backfill.since"


def test_unknown_flag_key_is_a_config_error() -> None:
    """--set with a key that does not exist names it instead of crashing."""
    with pytest.raises(ConfigError) as info:
        config.load(env={"STRIPE_API_KEY": KEY}, flags={"kafka.nope": "1"}, defaults_file=None)
    assert info.value.setting == "kafka.nope"


def test_secret_never_shows_in_repr_str_or_show() -> None:
    """The API key and SASL password are masked everywhere the config can be printed."""
    env = {"STRIPE_API_KEY": KEY, "INGESTOR_KAFKA__SASL_PASSWORD": "hunter2-sasl"}
    loaded = config.load(env=env, defaults_file=None)
    text = repr(loaded) + str(loaded.config) + repr(config.show(loaded))
    assert KEY not in text
    assert "hunter2-sasl" not in text
    assert config.MASK in text


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("hydrate.budget_share", "0"),
        ("hydrate.budget_share", "1.5"),
        ("hydrate.deadline_seconds", "0"),
        ("hydrate.deadline_seconds", "-1"),
    ],
)
def test_hydrate_share_and_deadline_are_validated(key: str, value: str) -> None:
    """A hydration budget share outside (0, 1] or a non-positive deadline names its key."""
    with pytest.raises(ConfigError) as info:
        config.load(env={"STRIPE_API_KEY": KEY}, flags={key: value}, defaults_file=None)
    assert info.value.setting == key


@pytest.mark.parametrize("value", ["-0.01", "0.2"])
def test_a_sweep_reserve_outside_the_sweep_share_names_its_key(value: str) -> None:
    """The sweeps' reserved share must lie within [0, tail.sweep_budget_share] (0.1)."""
    key = "tail.sweep_reserved_share"
    with pytest.raises(ConfigError) as info:
        config.load(env={"STRIPE_API_KEY": KEY}, flags={key: value}, defaults_file=None)
    assert info.value.setting == key
    ok = config.load(env={"STRIPE_API_KEY": KEY}, flags={key: "0"}, defaults_file=None)
    assert ok.config.tail.sweep_reserved_share == 0


def test_topic_partitions_and_replication_default_to_the_broker() -> None:
    """Both default to 0 (the broker's own default), shown as such by `config show`;
    negative values are bad configuration naming the key."""
    loaded = config.load(env={"STRIPE_API_KEY": KEY}, defaults_file=None)
    assert loaded.config.kafka.topic_partitions == config.BROKER_DEFAULT == 0
    assert loaded.config.kafka.topic_replication == config.BROKER_DEFAULT
    rows = {key: value for key, value, _ in config.show(loaded)}
    assert rows["kafka.topic_partitions"] == "0 (broker default)"
    assert rows["kafka.topic_replication"] == "0 (broker default)"
    assert (
        config.load(
            env={"STRIPE_API_KEY": KEY}, defaults_file=DEFAULT_TOML
        ).config.kafka.topic_replication
        == 0
    )  # default.toml agrees
    for key in ("TOPIC_PARTITIONS", "TOPIC_REPLICATION"):
        with pytest.raises(ConfigError, match=f"kafka.{key.lower()}"):
            config.load(
                env={"STRIPE_API_KEY": KEY, f"INGESTOR_KAFKA__{key}": "-1"}, defaults_file=None
            )
    set_rows = {
        k: v
        for k, v, _ in config.show(
            config.load(
                env={"STRIPE_API_KEY": KEY, "INGESTOR_KAFKA__TOPIC_REPLICATION": "3"},
                defaults_file=None,
            )
        )
    }
    assert set_rows["kafka.topic_replication"] == "3"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("stripe.rate_limit", "-1"),
        ("stripe.endpoint_rate_limit", "0"),
        ("stripe.files_rate_limit", "-5"),
        ("stripe.concurrency_limit", "0"),
        ("stripe.endpoint_concurrency_limit", "0"),
    ],
)
def test_every_stripe_limit_is_validated(key: str, value: str) -> None:
    """A non-positive rate (a negative global one: 0 there means auto) or a concurrency cap
    below 1 is refused with the key's name, before anything starts."""
    with pytest.raises(ConfigError) as info:
        config.load(env={"STRIPE_API_KEY": KEY}, flags={key: value}, defaults_file=None)
    assert info.value.setting == key


@pytest.mark.parametrize(
    ("key", "rate"),
    [("sk_test_abc", 25.0), ("rk_test_abc", 25.0), ("sk_live_abc", 100.0), ("rk_live_abc", 100.0)],
)
def test_global_limit_defaults_to_stripes_sandbox_or_live_figure(key: str, rate: float) -> None:
    """Unset, the global limit is 25/s for a sandbox key and 100/s for a live one; the other
    limits default to Stripe's documented figures; STRIPE_RATE_LIMIT overrides the global."""
    s = config.load(env={"STRIPE_API_KEY": key}, defaults_file=None).config.stripe
    assert s.effective_rate_limit == rate
    assert (s.endpoint_rate_limit, s.files_rate_limit) == (25.0, 20.0)
    env = {"STRIPE_API_KEY": key, "STRIPE_RATE_LIMIT": "300"}
    raised = config.load(env=env, defaults_file=None).config.stripe
    assert raised.effective_rate_limit == 300.0


WH_A = "whsec_" + "a" * 32
WH_B = "whsec_" + "b" * 32


def test_webhook_secrets_come_from_env_comma_separated_and_never_show() -> None:
    """STRIPE_WEBHOOK_SECRET holds several secrets (rotation); repr and `config show` mask
    every one of them."""
    env = {"STRIPE_API_KEY": KEY, "STRIPE_WEBHOOK_SECRET": f"{WH_A}, {WH_B}"}
    loaded = config.load(env=env | {"INGESTOR_WEBHOOK__ENABLED": "true"}, defaults_file=None)
    w = loaded.config.webhook
    assert w.enabled
    assert [s.reveal() for s in w.secrets] == [WH_A, WH_B]
    rows = {k: (v, src) for k, v, src in config.show(loaded)}
    assert rows["webhook.secrets"] == (f"{config.MASK},{config.MASK}", "env STRIPE_WEBHOOK_SECRET")
    text = repr(loaded.config) + str(config.show(loaded))
    assert WH_A not in text
    assert WH_B not in text


def test_webhook_secret_file_holds_one_secret_per_line_or_comma(tmp_path: Path) -> None:
    """STRIPE_WEBHOOK_SECRET_FILE (a mounted secret) is read like the env variable."""
    path = tmp_path / "whsec"
    path.write_text(f"{WH_A}\n{WH_B}\n")
    env = {"STRIPE_API_KEY": KEY, "STRIPE_WEBHOOK_SECRET_FILE": str(path)}
    loaded = config.load(env=env, defaults_file=DEFAULT_TOML)
    assert [s.reveal() for s in loaded.config.webhook.secrets] == [WH_A, WH_B]
    assert loaded.sources["webhook.secrets"] == "env STRIPE_WEBHOOK_SECRET_FILE"


def test_webhook_defaults_are_off_and_show_unset_secrets() -> None:
    """Webhooks are off by default, on their own port, at Stripe's default path."""
    loaded = config.load(env={"STRIPE_API_KEY": KEY}, defaults_file=DEFAULT_TOML)
    w = loaded.config.webhook
    assert (w.enabled, w.port, w.path, w.tolerance_seconds) == (
        False,
        8081,
        "/webhooks/stripe",
        300,
    )
    assert ("webhook.secrets", "(unset)", "default") in config.show(loaded)


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"INGESTOR_WEBHOOK__ENABLED": "true"}, "webhook.secrets"),
        ({"STRIPE_WEBHOOK_SECRET": "sk_test_notawebhooksecret"}, "webhook.secrets"),
        ({"STRIPE_WEBHOOK_SECRET": "whsec_"}, "webhook.secrets"),
        ({"INGESTOR_WEBHOOK__PORT": "70000"}, "webhook.port"),
        ({"INGESTOR_WEBHOOK__PATH": "webhooks"}, "webhook.path"),
        ({"INGESTOR_WEBHOOK__ORDER": "random"}, "INGESTOR_WEBHOOK__ORDER"),
        ({"INGESTOR_WEBHOOK__ACK_TIMEOUT_SECONDS": "0"}, "webhook.ack_timeout_seconds"),
        ({"INGESTOR_WEBHOOK__MAX_BODY_BYTES": "10"}, "webhook.max_body_bytes"),
    ],
)
def test_webhook_settings_are_validated_without_echoing_secrets(
    env: dict[str, str], setting: str
) -> None:
    """A bad webhook setting is one ConfigError naming it (exit 2), and the message never
    contains a secret's value."""
    with pytest.raises(ConfigError) as info:
        config.load(env={"STRIPE_API_KEY": KEY} | env, defaults_file=None)
    assert info.value.setting == setting
    assert "notawebhooksecret" not in str(info.value)
