"""Command line: `ingestor run|sim|tail|check|config show`, and its exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ingestor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="tail Stripe events into Kafka")
    run.add_argument("--config", metavar="FILE")
    run.add_argument("--backfill", action="store_true", help="replay history first")
    run.add_argument("--since", metavar="WHEN", help="backfill start: RFC 3339 or a duration (7d)")
    run.add_argument("--once", action="store_true", help="exit 0 once all available is committed")

    sim = sub.add_parser("sim", help="run the Stripe API simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=12111)
    sim.add_argument("--scenario", metavar="FILE")
    sim.add_argument("--seed", type=int, default=None)

    cfg = sub.add_parser("config", help="configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    show = cfg_sub.add_parser("show", help="print the effective config with sources")
    show.add_argument("--config", metavar="FILE")

    check = sub.add_parser("check", help="probe Stripe and Kafka")
    check.add_argument("--config", metavar="FILE")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "sim":
        from ingestor.sim.server import main as sim_main

        return sim_main(host=args.host, port=args.port, scenario=args.scenario, seed=args.seed)
    print(f"ingestor: '{args.command}' is not implemented yet", file=sys.stderr)
    return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
