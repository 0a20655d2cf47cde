"""Benchmark: the library scorer (`dpiqa.load_scorer`) against the bare model loop, images/s on a folder of JPEGs.

The bare loop is what a user writes without dpiqa: read the file, PIL's decode (with the same reduced-scale JPEG
`draft` the engine asks for) and resize, the model's forward on a batch. The library scorer adds what it does on
top: the engine's decoder (EXIF orientation, alpha, 16-bit, the bomb limit, a status per image) and score stage.
Both run in this process on the same files, alternated (a busy moment on a shared machine hits both); the run
stops unless both give the same scores. The images are the demo corpus's photographs (<= 512 px on their long
side) and three distortions of each, as JPEGs (quality 90).

    python bench/api.py [--model demo] [--repeats 5] [--batch-size 32] [--out bench/results/api-cpu.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import publish  # noqa: E402
from dpiqa.version import machine  # noqa: E402


def jpeg_folder(folder: Path) -> list[Path]:
    from PIL import Image

    from dpiqa.engine.demo import PHOTOGRAPHS, reference
    from dpiqa.engine.distortions import distort

    paths = []
    for _, name, loader in PHOTOGRAPHS:
        photo = reference(loader)
        versions = [
            np.asarray(photo),
            *(distort(photo, k, 3, seed=0) for k in ("gaussian_noise", "jpeg", "gaussian_blur")),
        ]
        for i, pixels in enumerate(versions):
            path = folder / f"{name}-{i}.jpg"
            Image.fromarray(pixels).save(path, quality=90)
            paths.append(path)
    return paths


def bare_loop(model_name: str, batch_size: int):  # a function of a list of paths
    """Decode + model call written plainly: PIL and torch, no dpiqa code but loading the weights."""
    import torch
    from PIL import Image

    from dpiqa.models import load_model

    model = load_model(model_name).eval()
    size = model.config.image_size
    lo, hi = model.config.value_range
    mos_scale = float(model.config.mos_scale)
    filters = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
    resample = filters[model.config.interpolation]

    def score(paths: list[Path]) -> np.ndarray:
        out = []
        for start in range(0, len(paths), batch_size):
            pixels = []
            for path in paths[start : start + batch_size]:
                img = Image.open(path)
                img.draft("RGB", (size, size))
                pixels.append(np.asarray(img.convert("RGB").resize((size, size), resample)))
            x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() * ((hi - lo) / 255.0) + lo
            with torch.inference_mode():
                scores, _ = model(x)
            out.append(scores.float().numpy() * mos_scale)
        return np.concatenate(out)

    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="a torch model without decoder statistics (default: demo)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    import dpiqa

    with tempfile.TemporaryDirectory() as tmp:
        paths = jpeg_folder(Path(tmp))
        runs = {"bare loop": bare_loop(args.model, args.batch_size)}
        library = dpiqa.load_scorer(args.model, device="cpu", batch_size=args.batch_size)
        runs["dpiqa.load_scorer"] = library
        scores = {name: run(paths[: args.batch_size]) for name, run in runs.items()}  # warm-up, and the check
        gap = float(np.abs(scores["bare loop"] - scores["dpiqa.load_scorer"]).max())
        if gap > 1e-3:
            raise SystemExit(f"the two loops score differently (max gap {gap:.2e}): not the same computation")
        # images per second of wall time, and per second of this process's CPU time (all its threads): on a shared
        # machine other people's work stretches the wall time of one pass more than another's, not the CPU time
        rates: dict[str, list[float]] = {name: [] for name in runs}
        cpu_rates: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                t0, c0 = time.perf_counter(), time.process_time()
                run(paths)
                rates[name].append(len(paths) / (time.perf_counter() - t0))
                cpu_rates[name].append(len(paths) / (time.process_time() - c0))
    median = {name: statistics.median(v) for name, v in rates.items()}
    cpu_median = {name: statistics.median(v) for name, v in cpu_rates.items()}
    # the ratio of each repeat's two passes, which ran back to back (paired), then their median: the load of a
    # shared machine drifts over a run, and a ratio of the two medians would mix passes of different moments
    per_repeat = [a / b for a, b in zip(rates["dpiqa.load_scorer"], rates["bare loop"], strict=True)]
    cpu_per_repeat = [a / b for a, b in zip(cpu_rates["dpiqa.load_scorer"], cpu_rates["bare loop"], strict=True)]
    ratio, cpu_ratio = statistics.median(per_repeat), statistics.median(cpu_per_repeat)
    load = os.getloadavg()[0]
    lines = [
        "# The library scorer against the bare model loop (CPU)",
        "",
        f"`python bench/api.py --model {args.model} --repeats {args.repeats} --batch-size {args.batch_size}`: "
        f"{len(paths)} JPEGs (the demo corpus's {len(paths) // 4} photographs and 3 distortions of each, "
        f"<= 512 px, quality 90), batches of {args.batch_size}, {torch.get_num_threads()} torch threads, "
        f"{args.repeats} alternated repeats (median). The two give the same scores (max gap {gap:.1e}).",
        "",
        "| | images/s (median) | each repeat | images per CPU-second (median) | each repeat |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {name} | {median[name]:.1f} | {', '.join(f'{r:.1f}' for r in rates[name])} "
            f"| {cpu_median[name]:.1f} | {', '.join(f'{r:.1f}' for r in cpu_rates[name])} |"
            for name in runs
        ),
        f"| **ratio** (library / bare; median of the repeats' ratios) | **{ratio:.2f}** | {', '.join(f'{r:.2f}' for r in per_repeat)} "
        f"| **{cpu_ratio:.2f}** | {', '.join(f'{r:.2f}' for r in cpu_per_repeat)} |",
        "",
        f"Machine: {machine()}; load average {load:.1f} at the end of the run (a shared machine).",
    ]
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
