"""Options shared by the subcommands, defined once: checked number types, fsspec storage options, the
Ray cluster address, the executor, the precision, old spellings kept as deprecated aliases, and the one-line
usage errors of the `dpiqa` parser."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable

from dpiqa.errors import UsageError


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


def location(text: str) -> str:
    """A file, folder or URL option: never the empty string, which every filesystem reads as the current
    folder (`--input "$CORPUS"` with the variable unset would score everything below it)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "must name a file, folder or URL, not an empty string (an unset shell variable?)"
        )
    return text


def split_fractions(text: str) -> tuple[float, float, float]:
    """`--fractions train,val,test`: three finite numbers from 0 to 1 that sum to 1, the first above 0."""
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"must be three numbers from 0 to 1 like 0.7,0.1,0.2, not {text!r}")
    if abs(sum(values) - 1.0) > 1e-6 or values[0] == 0:
        raise argparse.ArgumentTypeError(f"must sum to 1 with a train fraction above 0, not {text!r}")
    return values  # type: ignore[return-value]


def epoch_list(text: str) -> tuple[int, ...]:
    """`--milestones 5` or `10,25`: epochs >= 1, comma-separated."""
    try:
        values = tuple(int(p) for p in text.split(","))
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"must be epochs >= 1 like 5 or 10,25, not {text!r}")
    return values


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
    p.add_argument(
        "--storage-options",
        type=json_object,
        default=None,
        metavar="JSON",
        help='fsspec options for every URL, e.g. \'{"endpoint_url": "http://localhost:9000"}\' '
        "(credentials come from the usual places: environment, ~/.aws, instance profiles)",
    )


def add_executor(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, auto: str, ray: str, local: str, default: str = "auto"
) -> None:
    """`--executor auto|ray|local`, each job saying what its choices do (`dpiqa.engine.executor.choose_executor`)."""
    says = {"auto": auto, "ray": ray, "local": local}
    p.add_argument(
        "--executor",
        choices=["auto", "ray", "local"],
        default=default,
        help="; ".join(f"{k}{' (default)' if k == default else ''}: {v}" for k, v in says.items()),
    )


PRECISIONS = ["auto", "fp32", "bf16", "fp16"]


def add_precision(p: argparse.ArgumentParser | argparse._ArgumentGroup, help: str) -> None:
    """`--precision auto|fp32|bf16|fp16`, each command saying what `auto` does there."""
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=help)


class _OldSpelling(argparse.Action):
    """An option's old spelling, kept working: it stores what the new spelling stores (`value` for a flag without
    an argument) and says once per command line, on stderr, which spelling to use."""

    def __init__(self, option_strings: list[str], dest: str, new: str, value: object = None, **kwargs) -> None:
        self.new, self.value, self.warned = new, value, False
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[override]
        if not self.warned:
            self.warned = True
            print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, self.value if self.nargs == 0 else values)


def add_old_spelling(
    p: argparse.ArgumentParser | argparse._ArgumentGroup,
    old: str,
    new: str,
    dest: str,
    value: object = None,
    type: Callable[[str], object] | None = None,
) -> None:
    """Keep `old` working as a deprecated alias (left out of `--help`) of the option `new` that stores into `dest`.

    Args:
        p: the parser (or group) that has `new`.
        old: the old spelling (`--shards`).
        new: what to write instead, as the warning names it (`--input`, `--device cuda`).
        dest: the attribute both spellings set.
        value: for an old flag without an argument (`--gpu`), what it stores; None: it takes an argument.
        type: the argument's type, as `new` has it.
    """
    if value is None:
        p.add_argument(old, dest=dest, action=_OldSpelling, new=new, type=type, help=argparse.SUPPRESS)
    else:
        p.add_argument(old, dest=dest, action=_OldSpelling, new=new, value=value, nargs=0, help=argparse.SUPPRESS)


def print_failures(result) -> int:  # dpiqa.engine.output.RunResult
    """After a run's summary line: one line per failed shard; returns the run's exit status."""
    for url, error in sorted(result.failed.items()):
        print(f"FAILED {url}: {error}")
    return result.exit_code


def add_address(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: RAY_ADDRESS, else a local Ray started for this job)",
    )


def add_run_options(p: argparse.ArgumentParser | argparse._ArgumentGroup, fast_paths: bool = True) -> None:
    """How the model runs (`RunOptions`): device, precision, threads and, with `fast_paths`, channels_last,
    compile and the runtime."""
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto: one actor per GPU of the cluster if it has GPUs, else CPU actors",
    )
    add_precision(p, "auto: bf16 on GPU, fp32 on CPU")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch (or onnxruntime) threads per CPU worker (default: its cores shared among its actors)",
    )
    if fast_paths:
        p.add_argument("--channels-last", action="store_true", help="NHWC memory format (faster on GPUs)")
        p.add_argument("--compile", action="store_true", help="torch.compile the model")
        p.add_argument(
            "--runtime",
            choices=["auto", "torch", "onnx"],
            default="auto",
            help="auto (default): onnxruntime on CPU for an ONNX export (dpiqa export), else torch",
        )


def run_options(args: argparse.Namespace):  # dpiqa.models.run_options.RunOptions
    """The `RunOptions` of parsed `add_run_options` arguments."""
    from dpiqa.models.run_options import RunOptions

    return RunOptions(
        device=args.device,
        precision=args.precision,
        threads=args.threads,
        channels_last=getattr(args, "channels_last", False),
        compile=getattr(args, "compile", False),
        runtime=getattr(args, "runtime", "auto"),
    )


def key_values(items: list[str], parse_json: bool, option: str) -> dict:
    """`KEY=VALUE` items (repeatable options such as `--set`) -> dict; values parsed as JSON when they are."""
    out = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"{option}: expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        if parse_json:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        out[key] = value
    return out
