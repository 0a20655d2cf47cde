"""Benchmark: the shipped `demo` model's forward pass on the CPU through `Scorer` (what `dpiqa score` runs),
with glibc's default malloc against `dpiqa.models.allocator.keep_freed_memory` (which `Scorer` applies on a
CPU), each in a fresh process, alternated `--repeats` times; images/s is the median over the repeats.

    python bench/cpu_allocator.py [--repeats 3] [--batch 32] [--iters 10] [--out bench/results/cpu-allocator-cpu.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import publish  # noqa: E402
from dpiqa.version import machine  # noqa: E402

CHILD = """
import json, resource, sys, time
import numpy as np
import dpiqa.models.allocator as allocator
if sys.argv[1] == "default":
    allocator._applied = False  # as if not glibc: Scorer's call leaves malloc as it is
from dpiqa.models import load_scorer
scorer = load_scorer("demo")
batch, iters = int(sys.argv[2]), int(sys.argv[3])
images = np.random.default_rng(0).integers(0, 256, (batch, *scorer.preprocessing.size, 3), dtype=np.uint8)
scorer(images)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t = time.perf_counter()
for _ in range(iters):
    scorer(images)
seconds = time.perf_counter() - t
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"images_per_s": batch * iters / seconds, "page_faults_per_batch": faults / iters, "peak_rss_mib": peak}))
"""


def measure(mode: str, batch: int, iters: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(batch), str(iters)], capture_output=True, text=True, cwd=REPO
    )
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    results: dict[str, list[dict]] = {"default": [], "keep_freed_memory": []}
    for _ in range(args.repeats):
        for mode in results:
            results[mode].append(measure(mode, args.batch, args.iters))
            print(mode, json.dumps(results[mode][-1]), flush=True)

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    ratio = med("keep_freed_memory", "images_per_s") / med("default", "images_per_s")
    text = "\n".join(
        [
            f"`python bench/cpu_allocator.py --repeats {args.repeats} --batch {args.batch} --iters {args.iters}`: "
            "the `demo` model through `Scorer` on the CPU (fp32, torch's default threads), fresh process per run, "
            "runs alternated; medians.",
            "",
            "| glibc malloc | images/s | minor page faults per batch | peak RSS, MiB |",
            "| --- | ---: | ---: | ---: |",
            *(
                f"| {mode} | {med(mode, 'images_per_s'):.1f} | {med(mode, 'page_faults_per_batch'):.0f} | "
                f"{med(mode, 'peak_rss_mib'):.0f} |"
                for mode in results
            ),
            "",
            f"keep_freed_memory / default: {ratio:.2f}x images/s, "
            f"{med('keep_freed_memory', 'peak_rss_mib') / med('default', 'peak_rss_mib'):.2f}x peak RSS",
            "",
            f"Machine: {machine()}",
        ]
    )
    publish(text, args.out)


if __name__ == "__main__":
    main()
