"""Benchmark: what measuring the JPEG block grid before the resize (`aux_features=...+jpeg_grid`) costs the decoder,
against the same decoder for a model that does not read it, on the same JPEGs in the same run.

A model without statistics has PIL decode a large JPEG at a reduced scale (DCT-domain downscaling, `draft`) and
resizes that; a model that reads the grid needs the whole image decoded (a downscaled decode erases the 8-pixel
grid) and then measures it. Both go through `dpiqa.engine.stages.decode.decode_image`, as `dpiqa score` does. The
images: a real photograph (scikit-image's `chelsea`) upscaled to each size and saved as JPEG at quality 75.

    python bench/decode_statistics.py [--sizes 512,1024,2048,4032] [--repeats 5] [--out bench/results/decode-statistics.md]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import publish  # noqa: E402
from dpiqa.version import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,1024,2048,4032", help="long sides of the JPEGs, comma-separated")
    parser.add_argument("--image-size", type=int, default=224, help="the model's input side (the demo model's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import skimage.data
    from PIL import Image

    from dpiqa.engine.stages.decode import decode_image
    from dpiqa.models.preprocessing import Preprocessing

    grid = Preprocessing((args.image_size,) * 2, "bicubic", statistics=("jpeg_grid",))
    plain = replace(grid, statistics=())
    photo = Image.fromarray(skimage.data.chelsea())
    rows = []
    for side in (int(s) for s in args.sizes.split(",")):
        buf = io.BytesIO()
        photo.resize((side, round(side * photo.height / photo.width)), Image.Resampling.BICUBIC).save(
            buf, "JPEG", quality=75
        )
        data = buf.getvalue()
        seconds: dict[str, list[float]] = {"plain": [], "grid": []}
        for _ in range(args.repeats):  # alternated, so that a busy moment hits both
            for name, pre in (("plain", plain), ("grid", grid)):
                t0 = time.perf_counter()
                decode_image(data, pre)
                seconds[name].append(time.perf_counter() - t0)
        per = {k: statistics.median(v) for k, v in seconds.items()}
        rows.append((side, per["plain"], per["grid"]))

    lines = [
        f"`python bench/decode_statistics.py --sizes {args.sizes} --repeats {args.repeats}`: "
        f"`decode_image` to {args.image_size} x {args.image_size} (bicubic) on one core, medians of "
        f"{args.repeats}; machine: {machine()}",
        "",
        "| JPEG long side | without statistics (draft decode) | with `jpeg_grid` (full decode + grid) | ratio |",
        "| ---: | ---: | ---: | ---: |",
        *(f"| {side} | {a * 1e3:.1f} ms | {b * 1e3:.1f} ms | {b / a:.1f}x |" for side, a, b in rows),
    ]
    publish("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
