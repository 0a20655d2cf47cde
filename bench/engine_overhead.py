"""Benchmark: what the engine costs over a bare loop, and whether its memory grows with the corpus.

The same model on the same images, three ways, in the same run:
  (a) a bare loop in one process: read each tar, decode, preprocess, score in batches (timed after the
      model's load);
  (b) `dpiqa score --executor local`: the engine in one process (the `auto` choice for a corpus this
      size): a shard per unit, read and decoded on threads while the model scores, Parquet, markers;
  (c) `dpiqa score --executor ray`: the same units on a scoring actor of a local Ray.
The engine's steady-state rate is measured by difference: each executor scores the corpus and `--scale` copies
of it, and (extra images) / (extra seconds) is the rate. The seconds of a run are those from its first shard's
commit to its last (the modification times of the completion markers in `_done/`, written when each shard is
committed): start-up (imports, Ray's start, the scoring actor's start, the model's load: together 10-30 s,
varying by seconds on a busy 2-core machine) and the end (the manifest, Ray's shutdown) fall outside that
span, and what is done before the first commit (the first shards in flight) is the same work in both runs, so
it cancels in the difference. Until 2026-12-08 the seconds were the whole command's less Ray's start, and the
actor's start and model load varied by more than the gap being measured. The bare loop runs before, between
and after the two executors' runs, and each executor is measured against the mean of the two bare loops beside
it (a shared VM's speed drifts by 10-26 % over the minutes of a run: a baseline taken next to each executor
follows the drift); every bare loop is printed, so the drift is visible. It prints the rates, the ratios to
(a), the peak memory of the whole process tree (the driver and every Ray process) on both corpora, whose ratio
must stay near 1 (memory must not grow with the corpus), the same within the larger run (its peak against its
peak until the first corpus-worth of shards was committed), and the machine.

The model is a DP-IQA student whose compute dominates on a CPU (default: EfficientNet-B0 backbone at
the paper's 512x512 input, random weights, saved and loaded as a checkpoint); the images are
real-size JPEGs (~640x480) cut from scikit-image's sample photographs.

    python bench/engine_overhead.py [--images 480] [--shards 8] [--threads 2] [--scale 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import TreePeakRSS  # noqa: E402
from dpiqa.version import machine  # noqa: E402


def photographs() -> list[np.ndarray]:
    from skimage import data

    names = ["astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "hubble_deep_field"]
    return [np.asarray(getattr(data, n)())[..., :3] for n in names if hasattr(data, n)]


def build_corpus(directory: Path, images: int, shards: int, seed: int = 0) -> list[Path]:
    """`shards` tars of ~640x480 JPEGs: random crops of the sample photographs, resized and re-encoded."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = photographs()
    per_shard = images // shards
    paths = []
    for s in range(shards):
        path = directory / f"{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                src = sources[rng.integers(len(sources))]
                h, w = src.shape[:2]
                ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
                y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
                img = Image.fromarray(src[y : y + ch, x : x + cw]).resize((640, 480), Image.Resampling.BICUBIC)
                buf = io.BytesIO()
                img.save(buf, "JPEG", quality=90)
                info = tarfile.TarInfo(f"s{s:05d}_{i:06d}.jpg")
                info.size = len(buf.getvalue())
                tar.addfile(info, io.BytesIO(buf.getvalue()))
        paths.append(path)
    return paths


BARE_LOOP = r"""
import sys, tarfile, time, json
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
from dpiqa import models
from dpiqa.engine.stages.decode import decode_image
model, threads, batch, shards = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
torch.set_num_threads(threads)
scorer = models.load_scorer(model)  # defaults: CPU, fp32
t0 = time.monotonic()
n = 0
pending = []
def flush():
    global n, pending
    if pending:
        scorer(np.stack(pending)); n += len(pending); pending = []
for path in shards:
    with tarfile.open(path, "r|") as tar:
        for member in tar:
            pixels = decode_image(tar.extractfile(member).read(), scorer.preprocessing).pixels
            pending.append(pixels)
            if len(pending) == batch:
                flush()
flush()
print(json.dumps({"images": n, "seconds": time.monotonic() - t0}))
"""


def bare_loop(model: str, shards: list[Path], threads: int, batch: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", BARE_LOOP, str(REPO), model, str(threads), str(batch), *map(str, shards)],
        capture_output=True,
        text=True,
        check=True,
        env=_env(threads),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@dataclass
class EngineRun:
    """One `dpiqa score` run: its manifest, wall seconds, the process tree's memory (`TreePeakRSS`) and when each
    shard was committed (its completion marker's modification time), in order."""

    manifest: dict
    wall: float
    mem: TreePeakRSS
    commits: list[float]

    @property
    def rows(self) -> int:
        return self.manifest["rows"]

    @property
    def span(self) -> float:
        """Seconds from the run's first shard commit to its last."""
        return self.commits[-1] - self.commits[0]


def engine_run(model: str, shards: Path, output: Path, threads: int, batch: int, executor: str) -> EngineRun:
    """`dpiqa score --executor EXECUTOR` into `output`."""
    cmd = [
        sys.executable,
        "-m",
        "dpiqa.jobs.cli",
        "score",
        "--input",
        str(shards),
        "--output",
        str(output),
        "--model",
        model,
        "--device",
        "cpu",
        "--batch-size",
        str(batch),
        "--threads",
        str(threads),
        "--executor",
        executor,
    ]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(threads), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    with TreePeakRSS(proc.pid) as mem:
        log, _ = proc.communicate()
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"dpiqa score failed:\n{log[-3000:]}")
    commits = sorted(p.stat().st_mtime for p in (output / "_done").iterdir())
    if len(commits) < 2:
        raise RuntimeError(f"{output}: fewer than two committed shards; use more --shards")
    return EngineRun(json.loads((output / "manifest.json").read_text()), wall, mem, commits)


def _rate(*loops: dict) -> float:
    """Images per second over several bare loops taken together."""
    return sum(b["images"] for b in loops) / sum(b["seconds"] for b in loops)


def _env(threads: int) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": str(threads)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=480)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--backbone", default="efficientnet_b0")
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--model", default=None, help="score with this model instead of a random student")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--scale", type=int, default=2, help="the second run is on this many copies of the corpus")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="dpiqa-bench-"))
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    shards = build_corpus(corpus, args.images, args.shards)
    model = args.model
    if model is None:
        import torch

        from dpiqa.models.student import DPIQAStudent, StudentConfig

        torch.manual_seed(0)
        model = str(work / "student")
        DPIQAStudent(StudentConfig(backbone=args.backbone, image_size=args.image_size)).save_pretrained(model)
    n = args.images // args.shards * args.shards
    print(f"machine: {machine()}")
    print(
        f"model: {args.backbone if args.model is None else model} @ {args.image_size}; {n} JPEGs 640x480 in "
        f"{args.shards} shards; batch {args.batch_size}; {args.threads} torch threads"
    )

    loops = [("before the engine's runs", bare_loop(model, shards, args.threads, args.batch_size))]

    big = work / "corpus-x"
    big.mkdir(exist_ok=True)
    for copy in range(args.scale):
        for path in shards:
            target = big / f"c{copy:03d}_{path.name}"
            if not target.exists():
                os.link(path, target)

    runs = []  # (executor, the 1x run, the larger run, the rate of the bare loops beside them)
    for executor in ("local", "ray"):
        one = engine_run(model, corpus, work / f"out-{executor}-1x", args.threads, args.batch_size, executor)
        big_run = engine_run(
            model, big, work / f"out-{executor}-{args.scale}x", args.threads, args.batch_size, executor
        )
        loops.append((f"after the {executor} runs", bare_loop(model, shards, args.threads, args.batch_size)))
        beside = _rate(loops[-2][1], loops[-1][1])  # the bare loops just before and just after this executor
        runs.append((executor, one, big_run, beside))
    bare_rate = _rate(*(b for _, b in loops))

    print()
    print("| run | images | seconds | img/s | / its baseline |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for when, b in loops:
        print(
            f"| (a) bare loop, one process (after the model's load), {when} | {b['images']} | {b['seconds']:.1f} | "
            f"{b['images'] / b['seconds']:.2f} | {b['images'] / b['seconds'] / bare_rate:.2f} (of all three) |"
        )
    print(f"| (a) bare loop, all three | | | {bare_rate:.2f} | 1.00 |")
    for executor, one, big_run, beside in runs:
        label = "(b) dpiqa score, in this process" if executor == "local" else "(c) dpiqa score, on a local Ray"
        extra, seconds = big_run.rows - one.rows, big_run.span - one.span
        steady = extra / max(seconds, 1e-9)
        print(
            f"| {label}, steady state ({big_run.rows} - {one.rows} images in {big_run.span:.1f} - {one.span:.1f} s "
            f"from the first shard's commit to the last), against the bare loops beside it ({beside:.2f} img/s) | "
            f"{extra} | {seconds:.1f} | {steady:.2f} | **{steady / beside:.2f}** |"
        )
        print(
            f"| {label}, whole command incl. start-up | {one.rows} | {one.wall:.1f} | {one.rows / one.wall:.2f} | "
            f"{one.rows / one.wall / beside:.2f} |"
        )
    print()
    print(
        "| executor | corpus | images | peak PSS of driver + Ray processes (MiB) | processes then | peak summed RSS (MiB) |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for executor, one, big_run, _ in runs:
        for name, run in (("1x", one), (f"{args.scale}x", big_run)):
            mem = run.mem
            print(f"| {executor} | {name} | {run.rows} | {mem.peak_pss:.0f} | {mem.processes} | {mem.peak:.0f} |")
        print(
            f"| {executor} | {args.scale}x / 1x | | {big_run.mem.peak_pss / one.mem.peak_pss:.3f} | | "
            f"{big_run.mem.peak / one.mem.peak:.3f} |"
        )
    print()
    print(
        f"Within the {args.scale}x run (one process's memory against itself, free of the run-to-run spread of the "
        "early peak): the peak summed RSS of the whole run against the peak until the first 1x of its shards "
        "was committed."
    )
    print()
    print("| executor | peak until 1x committed (MiB) | peak of the whole run (MiB) | whole / 1x |")
    print("| --- | ---: | ---: | ---: |")
    for executor, _, big_run, _ in runs:
        early = big_run.mem.peak_until(big_run.commits[len(big_run.commits) // args.scale - 1])
        print(f"| {executor} | {early:.0f} | {big_run.mem.peak:.0f} | {big_run.mem.peak / early:.3f} |")
    print()
    print("goals: steady state >= 0.9 of the bare loop; peak memory ratio within 1.10")


if __name__ == "__main__":
    main()
