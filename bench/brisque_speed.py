"""Benchmark: the BRISQUE baseline (`--model brisque`) against the `brisque` package's own computation, on the
same images in the same run: seconds per image and the ratio.

"Package" is our numpy-2 fix with the package's own `score` (which computes the full-size coefficients once
more than it uses); "ours" is `dpiqa.models.brisque`, which leaves that pass out. The run stops unless both
give the same scores (to 1e-9). The images are the demo corpus's photographs at <= 512 px on their long side
and three distortions of each.

    python bench/brisque_speed.py [--repeats 3] [--out bench/results/brisque-cpu.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import publish  # noqa: E402
from dpiqa.version import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--photographs", type=int, default=None, help="only the first N photographs (default: all; a smoke run)"
    )
    args = parser.parse_args()

    from brisque import BRISQUE

    from dpiqa.engine.demo import PHOTOGRAPHS, reference
    from dpiqa.engine.distortions import distort
    from dpiqa.models.brisque import brisque_model

    ours = brisque_model()

    class Package(type(ours)):  # the numpy-2 fix only, the package's computation otherwise
        score = BRISQUE.score

    package = Package(url=False)
    images = []
    photographs = PHOTOGRAPHS[: args.photographs]
    for _, _, loader in photographs:
        photo = np.asarray(reference(loader))
        images += [photo, *(distort(photo, kind, 3, seed=0) for kind in ("gaussian_noise", "jpeg", "gaussian_blur"))]

    seconds: dict[str, list[float]] = {"package": [], "ours": []}
    scores: dict[str, list[float]] = {}
    for _ in range(args.repeats):  # alternated, so that a busy moment hits both
        for name, model in (("package", package), ("ours", ours)):
            t0 = time.perf_counter()
            with np.errstate(invalid="ignore", divide="ignore"):
                scores[name] = [float(model.score(im)) for im in images]
            seconds[name].append((time.perf_counter() - t0) / len(images))
    per = {k: statistics.median(v) for k, v in seconds.items()}
    # (the package's score of one image varies by ~1e-12 from call to call)
    if not np.allclose(scores["package"], scores["ours"], rtol=1e-9, atol=1e-9, equal_nan=True):
        raise SystemExit("the scores differ from the package's: not a like-for-like comparison")
    lines = [
        f"`python bench/brisque_speed.py --repeats {args.repeats}`: BRISQUE on {len(images)} images (the demo's "
        f"{len(photographs)} photographs at <= 512 px and their noise, JPEG and blur at level 3), medians of "
        f"{args.repeats} passes, alternated in one run.",
        "",
        "| | s per image | images/s |",
        "| --- | ---: | ---: |",
        *(f"| {k} | {v:.4f} | {1 / v:.1f} |" for k, v in per.items()),
        "",
        f"ours / package time: {per['ours'] / per['package']:.2f}; every score the package's (to 1e-9)",
        "",
        f"Machine: {machine()}",
    ]
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
