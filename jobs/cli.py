"""The `dpiqa` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from jobs.args import Parser

# Subcommand modules, in `--help` order; each has `add_parser(subparsers)` and keeps heavy imports
# inside its `main`, so `dpiqa --help` stays fast.
JOBS = ["demo", "score", "audit", "filter", "train_teacher", "distill", "eval", "ablate", "export", "model_info"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="dpiqa",
        description="Distributed image-quality scoring with DP-IQA on Ray: score shards, audit and filter "
                    "the results, train and distill models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for job in JOBS:
        importlib.import_module(f"jobs.{job}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        # Bad input gets one line naming what is wrong; --verbose shows the traceback.
        if args.verbose:
            raise
        print(f"dpiqa {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
