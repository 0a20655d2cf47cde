"""Benchmark: how long `dpiqa score --model demo --executor ray` takes on a local Ray over the demo corpus,
before and after the start-up work, measured in the same run on the same machine; and the same command with
`--executor auto` (the default now), which runs a job this small without Ray.

`before` is the commit the work started from (`--before-ref`), run from a git worktree; `after` is this
checkout. Each runs `--repeats` times, alternating, each a fresh `dpiqa` process with a fresh local Ray and
a fresh output folder. Reported: the whole command's wall time, the time until the first scored rows came
back (the manifest's, counted from the start of the scoring run), and the parts of start-up the new manifest
records (checks before Ray, Ray's start).

    python bench/startup.py [--repeats 3] [--before-ref 8fcc414] [--out bench/results/startup-cpu.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import publish  # noqa: E402
from dpiqa.version import machine  # noqa: E402

BEFORE_REF = "8fcc414"  # main when the start-up work began


def run(code: Path, corpus: Path, out: Path, executor: str = "ray") -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "RAY_USAGE_STATS_ENABLED": "0"}
    # the command line module in the code's own names: the `before` commit predates the dpiqa namespace
    cli = "dpiqa.jobs.cli" if (code / "dpiqa").is_dir() else "jobs.cli"
    args = [
        sys.executable,
        "-m",
        cli,
        "score",
        "--input",
        str(corpus),
        "--output",
        str(out),
        "--model",
        "demo",
        "--executor",
        executor,
    ]
    t0 = time.monotonic()
    proc = subprocess.run(args, env=env, capture_output=True, text=True, cwd=code)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"dpiqa score failed in {code}:\n{proc.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    startup = manifest.get("startup") or {}
    return {
        "wall": wall,
        "first_row": startup.get("first_row_seconds", manifest.get("startup_seconds")),
        "checks": startup.get("checks_seconds"),
        "ray_start": startup.get("ray_start_seconds"),
        "rows": manifest["rows"],
        "stderr_lines": len(proc.stderr.strip().splitlines()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--before-ref", default=BEFORE_REF)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--photographs", type=int, default=None, help="score only the first N photographs' shards (a smoke run)"
    )
    args = ap.parse_args()

    from dpiqa.engine.demo import build_corpus

    work = Path(tempfile.mkdtemp(prefix="dpiqa-startup-"))
    before = work / "before"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(before), args.before_ref],
        check=True,
        capture_output=True,
    )
    try:
        shards = build_corpus(work / "corpus", args.photographs)
        results: dict[str, list[dict]] = {"before": [], "after": [], "after, --executor auto": []}
        for i in range(args.repeats):
            for name, code, executor in (
                ("before", before, "ray"),
                ("after", REPO, "ray"),
                ("after, --executor auto", REPO, "auto"),
            ):
                r = run(code, work / "corpus", work / f"out-{name[:5]}-{executor}-{i}", executor)
                results[name].append(r)
                print(name, json.dumps(r), flush=True)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(before)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    def med(name: str, key: str) -> float | None:
        values = [r[key] for r in results[name] if r[key] is not None]
        return statistics.median(values) if values else None

    def fmt(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    rows = results["after"][0]["rows"]
    text = "\n".join(
        [
            f"`python bench/startup.py --repeats {args.repeats}`: `dpiqa score --model demo --executor ray` over the "
            f"demo corpus ({rows} images in {len(shards)} shards) on a fresh local Ray each time; medians of {args.repeats} runs, "
            f"before = `{args.before_ref}`, after = this checkout, alternated in one run.",
            "",
            "| | whole command, s | until the first rows, s | checks before Ray, s | Ray start, s | stderr lines |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            *(
                f"| {name} | {fmt(med(name, 'wall'))} | {fmt(med(name, 'first_row'))} | {fmt(med(name, 'checks'))} | "
                f"{fmt(med(name, 'ray_start'))} | {fmt(med(name, 'stderr_lines'), 0)} |"
                for name in results
            ),
            "",
            f"after / before: whole command {med('after', 'wall') / med('before', 'wall'):.2f}, until the first rows "
            f"{med('after', 'first_row') / med('before', 'first_row'):.2f} (both on a local Ray); `--executor auto`, "
            f"which runs a job this small in the `dpiqa` process itself (no Ray), whole command "
            f"{med('after, --executor auto', 'wall') / med('before', 'wall'):.2f}.",
            "",
            f"Machine: {machine()}",
        ]
    )
    publish(text, args.out)


if __name__ == "__main__":
    main()
