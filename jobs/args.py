"""Options shared by the subcommands, defined once: checked number types, fsspec storage options, the
Ray cluster address, the executor, and the one-line usage errors of the `dpiqa` parser."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line naming the option (exit status 2), not the
    whole usage block: `dpiqa score: error: argument --batch-size: must be an integer >= 1, not '-1'`."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _number(kind: type, what: str, ok: Callable[[float], bool]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = _number(int, "an integer >= 1", lambda v: v >= 1)
nonnegative_int = _number(int, "an integer >= 0", lambda v: v >= 0)
positive_float = _number(float, "a number > 0", lambda v: math.isfinite(v) and v > 0)
finite_float = _number(float, "a finite number", math.isfinite)
rate = _number(float, "a number from 0 to 1", lambda v: 0 <= v <= 1)
fraction = _number(float, "a number above 0 and at most 1", lambda v: 0 < v <= 1)
nonnegative_float = _number(float, "a number >= 0", lambda v: math.isfinite(v) and v >= 0)


def json_object(text: str) -> dict:
    """A JSON object typed on the command line (`--storage-options '{"endpoint_url": "..."}'`)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"must be a JSON object, not {text!r} ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object ({{...}}), not {text!r}")
    return value


def add_storage_options(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--storage-options", type=json_object, default=None, metavar="JSON",
                   help='fsspec options for every URL, e.g. \'{"endpoint_url": "http://localhost:9000"}\' '
                        "(credentials come from the usual places: environment, ~/.aws, instance profiles)")


def add_address(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--address", default=None,
                   help="Ray cluster address (default: RAY_ADDRESS, else a local Ray started for this job)")


def key_values(items: list[str], parse_json: bool, option: str) -> dict:
    """`KEY=VALUE` items (repeatable options such as `--set`) -> dict; values parsed as JSON when they are."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{option}: expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        if parse_json:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        out[key] = value
    return out
