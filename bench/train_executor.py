"""Benchmark: a small one-worker training job with its loop on Ray Train's worker actors (`--executor ray`, what
every training job did before) against the same loop in the job's process (`--executor local`, what
`--executor auto` picks for one worker with no cluster named), measured in the same run on the same machine.

The job: `dpiqa distill --mode none` of the tiny student (random initialisation) on a labelled table of
`--images` 64x64 images whose MOS is the inverse of their noise level, `--epochs` epochs, global batch 8.
Each executor runs `--repeats` times, alternating, each a fresh `dpiqa` process with a fresh local Ray and a
fresh output folder. Reported: the whole command's wall time and the training part of it (`trainer.fit`,
the card's `seconds`), medians; and that both ended at the same weights.

    python bench/train_executor.py [--repeats 3] [--images 96] [--epochs 3] [--out bench/results/train-executor-cpu.md]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import publish  # noqa: E402
from dpiqa.version import machine  # noqa: E402


def table(d: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    (d / "imgs").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        mos = float(rng.uniform(0, 100))
        noisy = np.clip(120 + rng.normal(0, (100 - mos) * 0.9, (64, 64, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(d / "imgs" / f"{i:03d}.png")
        rows.append((f"imgs/{i:03d}.png", mos))
    with open(d / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "mos"), *rows])
    return d / "labels.csv"


def run(labels: Path, out: Path, executor: str, epochs: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    args = [
        sys.executable,
        "-m",
        "dpiqa.jobs.cli",
        "distill",
        "--mode",
        "none",
        "--dataset",
        "csv",
        "--root",
        str(labels),
        "--config",
        "dpiqa-student-tiny",
        "--no-pretrained",
        "--epochs",
        str(epochs),
        "--batch-size",
        "8",
        "--threads",
        "1",
        "--executor",
        executor,
        "--output",
        str(out),
    ]
    t0 = time.monotonic()
    proc = subprocess.run(args, env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"dpiqa distill --executor {executor} failed:\n{proc.stderr[-3000:]}")
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["executor"] == executor, card["training"]["executor"]
    return {"wall": wall, "fit": card["training"]["seconds"], "out": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the result (Markdown) here")
    args = ap.parse_args()
    import torch

    from dpiqa import models

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        labels = table(tmp / "data", args.images)
        runs: dict[str, list[dict]] = {"ray": [], "local": []}
        for i in range(args.repeats):
            for executor in ("ray", "local"):
                r = run(labels, tmp / f"{executor}-{i}", executor, args.epochs)
                runs[executor].append(r)
                print(f"# {executor} {i + 1}/{args.repeats}: {r['wall']:.1f} s, fit {r['fit']:.1f} s", file=sys.stderr)
        a = models.load_model(str(runs["ray"][0]["out"])).state_dict()
        b = models.load_model(str(runs["local"][0]["out"])).state_dict()
        gap = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        same = all(torch.equal(a[k], b[k]) for k in a)
    med = {e: {k: statistics.median(r[k] for r in rs) for k in ("wall", "fit")} for e, rs in runs.items()}
    lines = [
        f"# One-worker training: Ray Train's workers vs the loop in the job's process ({machine()})",
        "",
        f"`dpiqa distill --mode none --config dpiqa-student-tiny --no-pretrained` on {args.images} 64x64 images, "
        f"{args.epochs} epochs, batch 8, `--threads 1`; medians of {args.repeats} alternating runs, each a fresh "
        "process with a fresh local Ray. Command: `python bench/train_executor.py "
        f"--repeats {args.repeats} --images {args.images} --epochs {args.epochs}`.",
        "",
        "| executor | whole command, s | training (`trainer.fit`), s |",
        "| --- | ---: | ---: |",
    ]
    for e in ("ray", "local"):
        lines.append(f"| `--executor {e}` | {med[e]['wall']:.1f} | {med[e]['fit']:.1f} |")
    lines += [
        "",
        f"local / ray: whole command **{med['local']['wall'] / med['ray']['wall']:.2f}x**, training "
        f"{med['local']['fit'] / med['ray']['fit']:.2f}x. The two ended at "
        + ("identical weights." if same else f"weights at most {gap:.2e} apart."),
    ]
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
