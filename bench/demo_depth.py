"""Benchmark: what the shipped `demo` student's encoder depth costs on the CPU. The shipped checkpoint (the
first 4 of its DINOv2 encoder's blocks) through `Scorer` (what `dpiqa score` runs), against the same config cut
to 2 blocks (the student shipped before it; random weights: the speed does not depend on their values), on
the same random 224x224 images, `--iters` batches per model alternated `--repeats` times in one process;
images/s is the median.

    python bench/demo_depth.py [--repeats 5] [--batch 32] [--iters 5] [--out bench/results/demo-depth-cpu.md]

`--baseline CHECKPOINT` compares the shipped checkpoint with another checkpoint instead (a retrained `demo`
against the one shipped before it), the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import publish  # noqa: E402
from dpiqa.version import machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--baseline", default=None, help="a checkpoint to compare with instead of the 2-block cut")
    args = ap.parse_args()

    import numpy as np
    import torch

    from dpiqa import models
    from dpiqa.models.run_options import RunOptions
    from dpiqa.models.student import DPIQAStudent

    shipped = models.load_model("demo")
    depth = shipped.config.backbone_kwargs["depth"]
    cut = dataclasses.replace(shipped.config, backbone_kwargs={**shipped.config.backbone_kwargs, "depth": 2})
    torch.manual_seed(0)
    other = (
        (
            f"{args.baseline} ({models.load_model(args.baseline).config.backbone_kwargs['depth']} blocks)",
            models.load_model(args.baseline),
        )
        if args.baseline
        else ("2 blocks", DPIQAStudent.from_config(cut).eval())
    )
    scorers = {
        f"{depth} blocks (shipped)": models.Scorer(shipped, RunOptions(device="cpu")),
        other[0]: models.Scorer(other[1], RunOptions(device="cpu")),
    }
    params = {name: sum(p.numel() for p in s.model.parameters()) for name, s in scorers.items()}
    size = shipped.config.preprocessing.size
    images = np.random.default_rng(0).integers(0, 256, (args.batch, *size, 3), dtype=np.uint8)
    rates: dict[str, list[float]] = {name: [] for name in scorers}
    for scorer in scorers.values():
        scorer(images)  # warm-up
    for _ in range(args.repeats):
        for name, scorer in scorers.items():
            t = time.perf_counter()
            for _ in range(args.iters):
                scorer(images)
            rates[name].append(args.batch * args.iters / (time.perf_counter() - t))
            print(name, f"{rates[name][-1]:.1f} images/s", flush=True)
    med = {name: statistics.median(r) for name, r in rates.items()}
    names = list(scorers)
    text = "\n".join(
        [
            f"`python bench/demo_depth.py --repeats {args.repeats} --batch {args.batch} --iters {args.iters}"
            + (f" --baseline {args.baseline}" if args.baseline else "")
            + "`: the "
            f"`demo` student through `Scorer` on the CPU (fp32, torch's {torch.get_num_threads()} threads), "
            f"{size[0]}x{size[1]} images, batch {args.batch}, {args.iters} batches per model alternated in one "
            "process; medians.",
            "",
            "| encoder | parameters | images/s |",
            "| --- | ---: | ---: |",
            *(f"| {name} | {params[name] / 1e6:.2f} M | {med[name]:.1f} |" for name in names),
            "",
            f"{names[0]} / {names[1]}: {med[names[0]] / med[names[1]]:.2f}x images/s",
            "",
            f"Machine: {machine()}",
        ]
    )
    publish(text, args.out)


if __name__ == "__main__":
    main()
