"""The `dpiqa` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import signal
import sys

from dpiqa.errors import CANNOT_RUN, USAGE, UsageError
from dpiqa.jobs.args import Parser
from dpiqa.models.allocator import one_arena

# Subcommand modules, in `--help` order; each has `add_parser(subparsers)` and keeps heavy imports
# inside its `main`, so `dpiqa --help` stays fast.
JOBS = [
    "demo",
    "score",
    "compact",
    "audit",
    "filter",
    "train_teacher",
    "distill",
    "eval",
    "ablate",
    "export",
    "convert",
    "model_info",
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="dpiqa",
        description="Distributed image-quality scoring with DP-IQA on Ray: score shards, audit and filter "
        "the results, train and distill models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for job in JOBS:
        importlib.import_module(f"dpiqa.jobs.{job}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    one_arena()  # before any thread starts (models/allocator.py: a model on a thread runs 2x slower without it)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # SIGTERM (a scheduler stopping the job, `kill`) ends the run as Ctrl-C does: the `finally` blocks stop the
    # scoring workers and the run record is written, and a local Ray this process started is shut down with every
    # worker it started.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        # Ray's compiled wait loop catches any KeyboardInterrupt raised by a signal handler and raises a plain one
        # in its place, so the exception's class cannot tell SIGTERM from Ctrl-C: the handler records that it ran.
        terminated = Terminated.received
        print(
            f"dpiqa {args.command}: {'terminated' if terminated else 'interrupted'}; rerun the same command to resume",
            file=sys.stderr,
        )
        return 143 if terminated else 130
    except (ValueError, OSError) as exc:
        # One line naming what is wrong; --verbose shows the traceback. Exit status 2 for a usage error (the
        # options can never work), 4 for what the command met before it could run (dpiqa/errors.py).
        if args.verbose:
            raise
        print(f"dpiqa {args.command}: error: {exc}", file=sys.stderr)
        return USAGE if isinstance(exc, UsageError) else CANNOT_RUN


def run() -> int:
    """The `dpiqa` command: `main`, then the process ends without collecting what is left one object at a time
    (with torch and timm loaded that took ~1 s of every command; `gc.freeze` leaves it to the OS). Not for
    callers that go on after `main`: they keep collecting as usual."""
    status = main()
    gc.freeze()
    return status


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (exit status 143)."""

    received = False


def _terminate(signum: int, frame: object) -> None:
    Terminated.received = True
    raise Terminated


if __name__ == "__main__":
    sys.exit(run())
