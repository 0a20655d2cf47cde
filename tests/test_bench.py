"""Every `bench/` script runs at its smallest size and prints its result, so a benchmark that no longer runs
fails CI (`make test-extra`, run by CI after the suite: ~3 minutes of fresh Pythons, kept out of `make test`;
not the numbers: a smoke run measures nothing worth keeping). `LEFT_OUT`
says which are not run and why; `bench/gpu.py` needs a GPU, so only its `--help` is run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LEFT_OUT = {
    # A cluster of several nodes and a baseline worktree (scale), or two executors on two corpora with a real
    # model (engine_overhead): minutes each even at their smallest; run by hand, results in bench/results.
    "scale.py",
    "engine_overhead.py",
    # Its `before` side (commit 8fcc414's engine, run from a worktree) no longer scores on this Ray: every attempt
    # ends in ActorDiedError ("cancelled before it started running"); it needs a new --before-ref or retiring.
    "startup.py",
}
TABLE = re.compile(r"^\|( *:?-{3,}:? *\|)+$", re.MULTILINE)  # a result table's header rule (Markdown)

# script -> (its smallest arguments, what its output must hold: text, or TABLE); {tmp} is a fresh folder.
# Each is a fresh Python (torch, often a model, some start child processes of their own): seconds of CPU each,
# so they run with the slow tests (`make test` and CI: RUN_SLOW=1); gpu.py's --help runs always.
SMOKE: dict[str, tuple[list[str], list]] = {
    "audit_memory.py": (
        ["--rows", "2000", "--rows-per-shard", "1000", "--workdir", "{tmp}"],
        ["peak RSS 10x / 1x = ", "(dpiqa audit)", "(run_audit only)"],
    ),
    "brisque_speed.py": (["--repeats", "1", "--photographs", "1"], [TABLE, "| ours |", "ours / package time"]),
    "cpu_allocator.py": (["--repeats", "1", "--batch", "2", "--iters", "1"], [TABLE, "Machine:"]),
    "decode_statistics.py": (["--sizes", "512", "--repeats", "1"], [TABLE, "| 512 |", "machine:"]),
    "demo_depth.py": (["--repeats", "1", "--batch", "2", "--iters", "1"], [TABLE, "Machine:"]),
    "latency.py": (
        [
            *("--tiers", "resnet18", "--baseline", "resnet18", "--runtimes", "eager", "--image-size", "64"),
            *("--batch-sizes", "1", "--warmup", "0", "--seconds", "0", "--min-iters", "1", "--max-iters", "1"),
        ],
        [TABLE, "resnet18"],
    ),
    "process_cpu.py": (["--interval", "0.1", "--", sys.executable, "-c", "sum(range(10**6))"], [TABLE]),
    "plan.py": (["--local", "100,200", "--s3", ""], [TABLE, "local folder", "Machine:"]),
}
HELP_ONLY = {
    "gpu.py": ["usage: gpu.py", "--smoke"],  # needs a CUDA GPU
    # Added in the same session as this list; their smallest sizes are still to be given a smoke run.
    "api.py": ["usage: api.py"],
    "compact.py": ["usage: compact.py"],
    "authors_latent.py": ["usage: authors_latent.py"],
    # Two training jobs, one on a fresh local Ray, even at its smallest: 90-100 s of the suite's 15 minutes; its
    # result is bench/results/train-executor-cpu.md, and the two executors' training is tested in tests/engine.
    "train_executor.py": ["usage: train_executor.py"],
}
# A fresh local Ray (or several `dpiqa` processes with one each) per run: tens of seconds on a 2-core machine.
SLOW: dict[str, tuple[list[str], list]] = {
    "audit_scale.py": (["--shards", "4", "--rows", "500", "--cpus", "1"], [TABLE, "Machine:"]),
}


def test_every_bench_script_has_a_smoke_run():
    scripts = {p.name for p in (REPO / "bench").glob("*.py")} - {"__init__.py", "common.py"} - LEFT_OUT
    assert scripts == set(SMOKE) | set(SLOW) | set(HELP_ONLY)


def _smoke(script: str, args: list[str], expected: list, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for want in expected:
        found = want.search(proc.stdout) if isinstance(want, re.Pattern) else want in proc.stdout
        assert found, (want, proc.stdout[-3000:], proc.stderr[-2000:])


@pytest.mark.parametrize("script", sorted(HELP_ONLY))
def test_bench_script_help(script: str, tmp_path: Path) -> None:
    _smoke(script, ["--help"], HELP_ONLY[script], tmp_path)


@pytest.mark.extra  # not in `make test`: `make test-extra` (CI runs both)
@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SMOKE))
def test_bench_script_runs_at_its_smallest_size(script: str, tmp_path: Path) -> None:
    _smoke(script, *SMOKE[script], tmp_path)


@pytest.mark.extra
@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SLOW))
def test_bench_script_with_ray_runs_at_its_smallest_size(script: str, tmp_path: Path) -> None:
    _smoke(script, *SLOW[script], tmp_path)
