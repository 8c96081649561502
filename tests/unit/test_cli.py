"""CLI: bad config exits 2 with one stderr line naming the setting; config show; exit codes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingestor import cli, config, logs

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk_test_51CliSecretKeyValue"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No STRIPE_/KAFKA_/INGESTOR_ variable of the machine leaks into a test; cwd = repo root."""
    for name in list(os.environ):
        if name.startswith(("STRIPE_", "KAFKA_", "INGESTOR_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(ROOT)
    yield
    logs.reset_logging()


def run_cli(
    capsys: pytest.CaptureFixture[str], *argv: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    mp = pytest.MonkeyPatch()
    try:
        for k, v in (env or {}).items():
            mp.setenv(k, v)
        code = cli.main(list(argv))
    finally:
        mp.undo()
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return str(path)


# (id, toml text or None, env, extra argv, setting named in the message)
BAD: list[tuple[str, str | None, dict[str, str], list[str], str]] = [
    ("unknown key", '[kafka]\nbootstrap = "x:1"\n', {}, [], "kafka.bootstrap"),
    ("unknown section", "[kafak]\nshard = 1\n", {}, [], "kafak"),
    ("wrong type", '[kafka]\ntopic_partitions = "six"\n', {}, [], "kafka.topic_partitions"),
    ("empty bootstrap", None, {"KAFKA_BOOTSTRAP_SERVERS": " "}, [], "kafka.bootstrap_servers"),
    ("bad base url", None, {"STRIPE_API_BASE": "ftp://example"}, [], "stripe.api_base"),
    ("illegal prefix", None, {"INGESTOR_TOPIC_PREFIX": "stripe events"}, [], "kafka.topic_prefix"),
    ("missing key", None, {"STRIPE_API_KEY": ""}, [], "stripe.api_key"),
    (
        "live key over http",
        None,
        {"STRIPE_API_KEY": "sk_live_51LiveKeyMustNotLeak", "STRIPE_API_BASE": "http://x:1"},
        [],
        "stripe.api_base",
    ),
    ("bad toml", "[kafka\nshard = 1\n", {}, [], "c.toml"),
    ("missing config file", None, {}, ["--config", "/nonexistent/ingestor.toml"], "--config"),
    ("bad env name", None, {"INGESTOR_KAFKA__BOOTSTRAP": "x:1"}, [], "INGESTOR_KAFKA__BOOTSTRAP"),
    (
        "unreadable key file",
        None,
        {"STRIPE_API_KEY_FILE": "/nonexistent/secret"},
        [],
        "STRIPE_API_KEY_FILE",
    ),
    ("bad flag value", None, {}, ["--http-port", "eighty"], "http.port"),
    ("bad --set", None, {}, ["--set", "nonsense"], "--set"),
    ("bad log level flag", None, {}, ["--log-level", "loud"], "log.level"),
]


@pytest.mark.parametrize("command", [["config", "show"], ["check"]])
@pytest.mark.parametrize(
    ("toml", "env", "argv", "setting"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_config_exits_2_with_one_line_naming_the_setting(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: list[str],
    toml: str | None,
    env: dict[str, str],
    argv: list[str],
    setting: str,
) -> None:
    """Every invalid-config case: exit 2, exactly one stderr line, no traceback, no output."""
    env = {"STRIPE_API_KEY": KEY, **env}
    extra = ["--config", write(tmp_path, toml)] if toml is not None else []
    code, out, err = run_cli(capsys, *command, *extra, *argv, env=env)
    assert code == cli.EXIT_CONFIG
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ingestor: config: {setting}") or (
        setting == "c.toml" and lines[0].startswith("ingestor: config: ")
    )
    assert setting in lines[0]
    assert out == ""
    assert "Traceback" not in err
    for value in env.values():
        if value.startswith(("sk_", "rk_")) and len(value) > 10:
            assert value not in err


def test_run_with_bad_since_exits_2_before_the_pipeline_is_imported(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run --backfill --since garbage` fails as config, before anything starts."""
    monkeypatch.setitem(sys.modules, "ingestor.pipeline", None)  # importing it would fail
    code, _, err = run_cli(
        capsys, "run", "--backfill", "--since", "soon", env={"STRIPE_API_KEY": KEY}
    )
    assert code == cli.EXIT_CONFIG
    assert err.startswith("ingestor: config: backfill.since: ")


@pytest.mark.parametrize(
    ("env", "setting"),
    [({}, "stripe.api_key"), ({"STRIPE_API_KEY": KEY, "KAFKA_BOOTSTRAP_SERVERS": ""}, "kafka")],
)
def test_real_entry_point_prints_one_line_and_exits_2(env: dict[str, str], setting: str) -> None:
    """`python -m ingestor config show` as a process: exit 2, one stderr line, no traceback."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "KAFKA_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "ingestor", "config", "show"],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith(f"ingestor: config: {setting}")


def test_config_show_masks_the_key_and_shows_sources(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Aligned `key = value  # source` lines; key masked; sources default/file/env/flag."""
    path = write(tmp_path, '[kafka]\ntopic_prefix = "fromfile"\n')
    env = {"STRIPE_API_KEY": KEY, "INGESTOR_KAFKA__SASL_PASSWORD": "hunter2-sasl-pw"}
    code, out, err = run_cli(
        capsys, "config", "show", "--config", path, "--http-port", "0", env=env
    )
    assert code == 0, err
    assert KEY not in out + err
    assert "hunter2-sasl-pw" not in out + err
    lines = out.splitlines()
    assert len(lines) == sum(len(dataclasses.fields(c)) for c in config.SECTIONS.values())
    rows = {}
    for line in lines:
        key, _, rest = line.partition(" = ")
        value, _, source = rest.rpartition("  # ")
        rows[key.strip()] = (value.strip(), source)
    assert rows["stripe.api_key"] == (config.MASK, "env STRIPE_API_KEY")
    assert rows["kafka.sasl_password"] == (config.MASK, "env INGESTOR_KAFKA__SASL_PASSWORD")
    assert rows["kafka.topic_prefix"] == ("fromfile", path)
    assert rows["http.port"] == ("0", "flag")
    assert rows["tail.poll_interval"] == ("1.0", "default")
    # Aligned: every ' = ' and every '  # ' at the same column.
    assert len({line.index(" = ") for line in lines}) == 1
    assert len({line.rindex("  # ") for line in lines}) == 1


def test_config_show_json_is_typed_and_masked(capsys: pytest.CaptureFixture[str]) -> None:
    """--json: one object of key -> {value, source}; the key masked, numbers stay numbers."""
    code, out, _ = run_cli(
        capsys,
        "config",
        "show",
        "--json",
        "--set",
        "stripe.accounts=acct_1,acct_2",
        env={"STRIPE_API_KEY": KEY},
    )
    assert code == 0
    assert KEY not in out
    doc = orjson.loads(out)
    assert doc["stripe.api_key"] == {"value": config.MASK, "source": "env STRIPE_API_KEY"}
    assert doc["stripe.accounts"] == {"value": ["acct_1", "acct_2"], "source": "flag"}
    assert doc["kafka.topic_partitions"]["value"] == 0


def test_since_without_backfill_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """`run --since` alone is refused by the parser with exit 2."""
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "--since", "7d"])
    assert info.value.code == 2
    assert "--since needs --backfill" in capsys.readouterr().err


def test_run_hands_the_loaded_config_and_flags_to_the_pipeline(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run` loads config first, then calls pipeline.main(loaded, backfill=, since=, once=)."""
    calls: list[tuple[config.Loaded, dict[str, Any]]] = []

    def fake_main(loaded: config.Loaded, **kw: Any) -> int:
        calls.append((loaded, kw))
        return 0

    monkeypatch.setitem(sys.modules, "ingestor.pipeline", types.SimpleNamespace(main=fake_main))
    code, _, _ = run_cli(
        capsys,
        "run",
        "--backfill",
        "--since",
        "7d",
        "--once",
        "--log-level",
        "warning",
        env={"STRIPE_API_KEY": KEY},
    )
    assert code == 0
    [(loaded, kw)] = calls
    assert kw == {"backfill": True, "since": "7d", "once": True}
    assert loaded.config.backfill.since == "7d"
    assert loaded.sources["backfill.since"] == "flag"
    assert loaded.config.log.level == "warning"


def test_unexpected_exception_is_one_masked_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug surfaces as one clear line (no traceback, secrets masked) and exit 1."""

    def boom(*_a: Any, **_k: Any) -> int:
        raise RuntimeError(f"boom with {KEY}")

    monkeypatch.setitem(sys.modules, "ingestor.pipeline", types.SimpleNamespace(main=boom))
    code, _, err = run_cli(capsys, "run", env={"STRIPE_API_KEY": KEY})
    assert code == cli.EXIT_FAILURE
    assert len(err.splitlines()) == 1
    assert err.startswith("ingestor: unexpected error: RuntimeError: boom with sk_test_********")
    assert KEY not in err
    assert "Traceback" not in err


def test_debug_flag_adds_the_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--debug prints the (masked) traceback before the one-line summary."""

    def boom(*_a: Any, **_k: Any) -> int:
        raise RuntimeError(f"boom with {KEY}")

    monkeypatch.setitem(sys.modules, "ingestor.pipeline", types.SimpleNamespace(main=boom))
    code, _, err = run_cli(capsys, "run", "--debug", env={"STRIPE_API_KEY": KEY})
    assert code == cli.EXIT_FAILURE
    assert "Traceback" in err
    assert KEY not in err


def test_ingestor_errors_name_their_kind_and_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A named failure (e.g. Fenced) prints its class and message and exits non-zero."""
    from ingestor.errors import Fenced

    def fenced(*_a: Any, **_k: Any) -> int:
        raise Fenced("another process owns shard 0")

    monkeypatch.setitem(sys.modules, "ingestor.pipeline", types.SimpleNamespace(main=fenced))
    code, _, err = run_cli(capsys, "run", env={"STRIPE_API_KEY": KEY})
    assert code == cli.EXIT_FAILURE
    assert err.strip() == "ingestor: Fenced: another process owns shard 0"


def test_output_into_a_closed_pipe_ends_quietly_with_exit_0() -> None:
    """`ingestor config show | head` where head has already gone: no "unexpected error:
    BrokenPipeError", no exit-time flush complaint, exit code 0."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ingestor", "config", "show"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env={**os.environ, "STRIPE_API_KEY": "sk_test_pipe"},
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert proc.stderr == b""
    assert proc.returncode == cli.EXIT_OK


def test_a_broken_pipe_that_is_not_stdout_is_still_an_unexpected_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A BrokenPipeError from elsewhere (a socket) while stdout is fine is reported, exit 1."""

    def broken(_args: Any) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "_dispatch", broken)
    assert cli.main(["config", "show"]) == cli.EXIT_FAILURE
    assert "unexpected error: BrokenPipeError" in capsys.readouterr().err


def test_help_lists_every_exit_code() -> None:
    """The CLI help names exit codes 0, 1, 2, 3 and 130."""
    text = cli.build_parser().format_help()
    for code in ("0 done", "1 a named failure", "2 bad configuration", "3 `run --once`", "130"):
        assert code in " ".join(text.split()), code
