"""Command line: `ingestor run|sim|tail|check|config show`, and its exit codes."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import select
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TextIO, cast

import orjson

from ingestor import config
from ingestor.errors import ConfigError, IngestorError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
# `run --once` found a stored cursor past Stripe's 30-day retention: a window was lost
# (pipeline.EXIT_DATA_LOST; the pipeline is imported lazily, so the number is repeated here).
EXIT_DATA_LOST = 3
EXIT_INTERRUPTED = 130

# Named flags and the config key each sets (`--set section.key=value` reaches every other key).
FLAG_KEYS: dict[str, str] = {
    "api_base": "stripe.api_base",
    "bootstrap_servers": "kafka.bootstrap_servers",
    "topic_prefix": "kafka.topic_prefix",
    "http_host": "http.host",
    "http_port": "http.port",
    "log_level": "log.level",
    "log_format": "log.format",
    "since": "backfill.since",
}


def _config_options() -> argparse.ArgumentParser:
    """Options shared by every command that loads the config."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("configuration (flags win over env, env over files)")
    g.add_argument("--config", metavar="FILE", help="TOML file on top of config/default.toml")
    g.add_argument("--api-base", metavar="URL", help="stripe.api_base")
    g.add_argument("--bootstrap-servers", metavar="HOST:PORT", help="kafka.bootstrap_servers")
    g.add_argument("--topic-prefix", metavar="PREFIX", help="kafka.topic_prefix")
    g.add_argument("--http-host", metavar="HOST", help="http.host")
    g.add_argument("--http-port", metavar="PORT", help="http.port (0 = any free port)")
    g.add_argument("--log-level", metavar="LEVEL", help="log.level: debug|info|warning|error")
    g.add_argument("--log-format", metavar="FMT", help="log.format: auto|json|console")
    g.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        help="set any config key, e.g. --set kafka.shards=6 (repeatable)",
    )
    return p


def _debug_option() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", help="print tracebacks of unexpected errors")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ingestor",
        description="Tails Stripe's Events API and publishes every event to Kafka, exactly once.",
        epilog=(
            "exit codes: 0 done or clean stop; 1 a named failure; 2 bad configuration;"
            " 3 `run --once` found a cursor past Stripe's 30-day retention (a window was lost);"
            " 130 interrupted"
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cfg_opts, dbg = _config_options(), _debug_option()

    run = sub.add_parser("run", parents=[cfg_opts, dbg], help="tail Stripe events into Kafka")
    run.add_argument("--backfill", action="store_true", help="replay history first")
    run.add_argument(
        "--since", metavar="WHEN", help="backfill start: a duration (7d, 12h) or RFC 3339"
    )
    run.add_argument("--once", action="store_true", help="exit 0 once all available is committed")

    sim = sub.add_parser("sim", parents=[dbg], help="run the Stripe API simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=12111)
    sim.add_argument("--scenario", metavar="FILE")
    sim.add_argument("--seed", type=int, default=None)

    tail = sub.add_parser(
        "tail", parents=[dbg], help="print what the ingestor published (read_committed)"
    )
    tail.add_argument(
        "--bootstrap",
        metavar="HOST:PORT",
        help="Kafka (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    tail.add_argument(
        "--prefix", metavar="P", help="topic prefix (default: $INGESTOR_TOPIC_PREFIX or stripe)"
    )
    tail.add_argument("--summary", action="store_true", help="a per-topic count table")
    tail.add_argument(
        "--types",
        metavar="PATTERN",
        action="append",
        default=[],
        help="only event types matching a glob, e.g. 'charge.*' (comma-separated, repeatable)",
    )
    tail.add_argument(
        "--account", metavar="ID", help="only this account's events (`platform`: the platform's)"
    )
    start = tail.add_mutually_exclusive_group()
    start.add_argument(
        "--since",
        dest="tail_since",
        metavar="WHEN",
        help="start at records published since WHEN: a duration (10m, 2h) or RFC 3339",
    )
    start.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the first record (the default unless --follow)",
    )
    tail.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing new records (starts at the end unless --since/--from-beginning)",
    )
    tail.add_argument("--limit", type=int, metavar="N", help="stop after N records")
    tail.add_argument(
        "--format",
        dest="output",
        choices=("auto", "text", "json"),
        default="auto",
        help="text: one readable line per event; json: JSON lines (auto: text on a terminal)",
    )
    tail.add_argument(
        "--max-seconds",
        type=float,
        metavar="N",
        help="without --follow give up after N seconds (default 60); with it stop after N",
    )

    cfg = sub.add_parser("config", help="configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    show = cfg_sub.add_parser(
        "show", parents=[cfg_opts, dbg], help="print the effective config with sources"
    )
    show.add_argument("--json", action="store_true", help="as one JSON object")

    check = sub.add_parser("check", parents=[cfg_opts, dbg], help="probe Stripe and Kafka")
    check.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="seconds per probe (default 10)"
    )
    return parser


def flags_from_args(args: argparse.Namespace) -> dict[str, str]:
    """The command's flags as {dotted config key: raw text}; ConfigError on a bad --set."""
    flags: dict[str, str] = {}
    for item in getattr(args, "set", []):
        key, eq, value = item.partition("=")
        if not eq or "." not in key:
            raise ConfigError("--set", f"expected SECTION.KEY=VALUE, got {item!r}")
        flags[key.strip()] = value
    for dest, key in FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            flags[key] = value
    return flags


def load_config(args: argparse.Namespace) -> config.Loaded:
    return config.load(getattr(args, "config", None), flags=flags_from_args(args))


def _one_line(text: str) -> str:
    from ingestor.logs import mask_secrets

    return mask_secrets(" ".join(text.split()))


def show_config(loaded: config.Loaded, *, as_json: bool, out: TextIO) -> None:
    """`key = value  # source`, aligned; secrets masked; or one JSON object."""
    rows = config.show(loaded)
    if as_json:
        doc = {key: {"value": _typed(loaded, key), "source": src} for key, _, src in rows}
        out.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    kw = max(len(k) for k, _, _ in rows)
    vw = max(len(v) for _, v, _ in rows)
    for key, value, source in rows:
        out.write(f"{key:<{kw}} = {value:<{vw}}  # {source}\n")


def _typed(loaded: config.Loaded, dotted: str) -> Any:
    section, _, key = dotted.partition(".")
    value = getattr(getattr(loaded.config, section), key)
    if isinstance(value, config.Secret):
        return config.MASK if value else ""
    if isinstance(value, tuple):
        return list(value)
    return value


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "sim":
        sim_main = cast(Callable[..., int], importlib.import_module("ingestor.sim.server").main)
        return sim_main(host=args.host, port=args.port, scenario=args.scenario, seed=args.seed)
    if args.command == "tail":
        from ingestor import kafka_tail

        return kafka_tail.main(
            bootstrap=args.bootstrap,
            prefix=args.prefix,
            summary=args.summary,
            max_seconds=args.max_seconds,
            types=args.types,
            account=args.account,
            since=args.tail_since,
            from_beginning=args.from_beginning,
            follow=args.follow,
            limit=args.limit,
            output=args.output,
        )

    # Everything below needs the config, and builds it before anything starts.
    loaded = load_config(args)
    if loaded.config.log.level == "debug":
        args.debug = True
    from ingestor.logs import configure_logging

    if args.command == "config":
        show_config(loaded, as_json=args.json, out=sys.stdout)
        return EXIT_OK
    if args.command == "check":
        from ingestor import check

        # Results go to stdout; logs stay on stderr and quiet unless asked for.
        configure_logging("debug" if args.debug else "error", "auto", sys.stderr)
        if not args.debug:
            # Library noise (aiokafka's connect errors) repeats what the FAIL lines say.
            logging.getLogger().setLevel(logging.CRITICAL)
        return check.main(loaded.config, timeout=args.timeout, out=sys.stdout)
    if args.command == "run":
        configure_logging(loaded.config.log.level, loaded.config.log.format)
        # Lazy: the pipeline pulls in everything else, and only `run` needs it.
        pipeline_main = cast(Callable[..., int], importlib.import_module("ingestor.pipeline").main)
        return pipeline_main(loaded, backfill=args.backfill, since=args.since, once=args.once)
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse prevents this


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and args.since is not None and not args.backfill:
        parser.error("--since needs --backfill")
    try:
        code = _dispatch(args)
        # A reader that went away shows up here, not in the interpreter's exit-time flush.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        if not _stdout_closed():
            return _unexpected(args)
        # The reader stopped reading (`ingestor config show | head`): end quietly, as Unix
        # tools do; stdout goes to /dev/null so the exit-time flush cannot complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK
    except ConfigError as exc:
        print(f"ingestor: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("ingestor: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except IngestorError as exc:
        _traceback(args)
        print(f"ingestor: {type(exc).__name__}: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception:
        return _unexpected(args)


def _unexpected(args: argparse.Namespace) -> int:
    """Reports the exception being handled in one line (a traceback with --debug)."""
    _traceback(args)
    exc = sys.exception()
    hint = "" if args.debug else " (run with --debug for the traceback)"
    print(
        f"ingestor: unexpected error: {type(exc).__name__}: {_one_line(str(exc))}{hint}",
        file=sys.stderr,
    )
    return EXIT_FAILURE


def _stdout_closed() -> bool:
    """True when stdout is a pipe or socket whose reader has gone (poll reports an error)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _traceback(args: argparse.Namespace) -> None:
    if args.debug:
        from ingestor.logs import mask_secrets

        sys.stderr.write(mask_secrets(traceback.format_exc()))


if __name__ == "__main__":
    sys.exit(main())
