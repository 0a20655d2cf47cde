"""Prints docs/reports/demo.md's per-photograph table of one demo distortion family.

Per-photograph ranking of one demo distortion family by several scored runs of the demo corpus, beside what
the family does to each photograph's pixels (its reference's mean level and the share of clipped pixels at the
strongest level). Prints a Markdown table (docs/reports/demo.md). With `--brisque-resized N`, one more column:
BRISQUE's rho on the family's images resized to N x N (bicubic) as a model with an N-pixel input sees them;
with `--blockiness`, the rho of the JPEG block-grid statistic (`dpiqa.models.preprocessing.jpeg_grid`, the mean of
its two axes) on the full-size images.

    python recipes/demo_by_photograph.py --kind overexposure \
        --scores student=demo-out/scores --scores brisque=../runs/brisque-demo
"""

from __future__ import annotations

import argparse

import numpy as np

from dpiqa.engine.demo import LEVELS, PHOTOGRAPHS, ranking_of_scores, reference
from dpiqa.engine.distortions import distort
from dpiqa.models.preprocessing import jpeg_grid


def family_rhos(kind: str, quality) -> dict[str, float]:  # PIL image -> float
    """Each photograph's Spearman rho between the level (0 = reference) and `quality` of its images."""
    from PIL import Image
    from scipy.stats import spearmanr

    rhos = {}
    for _, photo, loader in PHOTOGRAPHS:
        img = reference(loader)
        images = [img, *(Image.fromarray(np.asarray(distort(img, kind, lv, seed=lv))) for lv in LEVELS)]
        rhos[photo] = float(spearmanr([0, *LEVELS], [quality(im) for im in images]).statistic)
    return rhos


def resized_brisque(kind: str, size: int) -> dict[str, float]:
    """BRISQUE's rho for each photograph, its images resized to `size` x `size` (bicubic)."""
    from PIL import Image

    from dpiqa.models.brisque import brisque_quality

    return family_rhos(
        kind, lambda im: float(brisque_quality([np.asarray(im.resize((size, size), Image.Resampling.BICUBIC))])[0])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", required=True, help="a demo distortion family (overexposure, jpeg, ...)")
    parser.add_argument("--scores", action="append", required=True, help="NAME=output of `dpiqa score` (or demo)")
    parser.add_argument("--clipped", type=float, default=0.3, help="subset: clipped share at the top level >= this")
    parser.add_argument("--brisque-resized", type=int, help="add BRISQUE on the images resized to N x N")
    parser.add_argument("--blockiness", action="store_true", help="add the block-grid statistic at full size")
    args = parser.parse_args()
    runs = dict(s.split("=", 1) for s in args.scores)
    by_run = {
        name: ranking_of_scores(path)["per_distortion"][args.kind]["srcc_by_photograph"] for name, path in runs.items()
    }
    if args.brisque_resized:
        name = f"BRISQUE at {args.brisque_resized}x{args.brisque_resized}"
        runs[name] = ""
        by_run[name] = resized_brisque(args.kind, args.brisque_resized)
    if args.blockiness:
        runs["blockiness (full size)"] = ""
        by_run["blockiness (full size)"] = family_rhos(
            args.kind, lambda im: -float(np.mean(jpeg_grid(np.asarray(im.convert("L")))))
        )

    top = max(LEVELS)
    print(f"| photograph | mean level (0-255) | clipped at level {top} | " + " | ".join(runs) + " |")
    print("| --- | ---: | ---: | " + " | ".join("---:" for _ in runs) + " |")
    subset = []
    for _, photo, loader in PHOTOGRAPHS:
        img = reference(loader)
        clipped = float(np.mean(np.asarray(distort(img, args.kind, top, seed=top)).max(-1) >= 255))
        if clipped >= args.clipped:
            subset.append(photo)
        cells = " | ".join("n/a" if by_run[n].get(photo) is None else f"{by_run[n][photo]:+.2f}" for n in runs)
        print(f"| {photo} | {np.asarray(img).mean():.0f} | {100 * clipped:.0f}% | {cells} |")

    def mean(name: str, photos: list[str]) -> str:
        values = [by_run[name][p] for p in photos if by_run[name].get(p) is not None]
        return f"{np.mean(values):+.2f}" if values else "n/a"

    every = [p for _, p, _ in PHOTOGRAPHS]
    print(f"| **all {len(every)}** | | | " + " | ".join(mean(n, every) for n in runs) + " |")
    if 0 < len(subset) < len(every):  # a family that clips some photographs and not others (exposure)
        print(
            f"| **the {len(subset)} clipped >= {100 * args.clipped:.0f}% at level {top}** | | | "
            + " | ".join(mean(n, subset) for n in runs)
            + " |"
        )


if __name__ == "__main__":
    main()
