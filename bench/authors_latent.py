"""Benchmark: how much the authors' sampled VAE latent moves a teacher's scores, against our posterior mean.

A teacher (a converted checkpoint from `dpiqa convert`, or a named configuration with random weights) scores the
bundled demo photographs (`dpiqa.engine.demo.PHOTOGRAPHS`, resized to its input as the engine's decoder does) once
with the posterior mean (`inference_latent="mean"`, our default) and `--draws` times with a fresh sample each pass
(`"sample"`, the released code's way). Reported in MOS points: the spread of an image's sampled scores, their
distance from its mean-latent score, and the Spearman correlation of each draw's ranking with the mean-latent
ranking; and the VAE posterior's noise-to-signal ratio (std over |mean| of the latent), which is what the size of
the effect comes from. With random weights (no real checkpoint at hand) the numbers say nothing about the
released teacher: a random VAE's posterior variance is nothing like Stable Diffusion's.

    python bench/authors_latent.py [--model dpiqa-teacher-tiny | CHECKPOINT] [--draws 8] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import publish  # noqa: E402
from dpiqa.version import machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dpiqa-teacher-tiny", help="a teacher checkpoint or named configuration")
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import numpy as np
    import torch
    from scipy.stats import spearmanr

    from dpiqa import models
    from dpiqa.engine.demo import PHOTOGRAPHS, reference
    from dpiqa.engine.stages.decode import resize

    model = models.load_model(args.model, device=args.device).eval()
    if model.architecture != "dpiqa-teacher":
        raise SystemExit(f"{args.model}: a {model.architecture}, not a teacher")
    pre = model.config.preprocessing
    pixels = np.stack([resize(reference(load), pre) for _, _, load in PHOTOGRAPHS])
    x = pre.to_tensor(torch.from_numpy(pixels).to(args.device))
    scale = float(model.config.mos_scale)
    torch.manual_seed(args.seed)
    with torch.inference_mode():
        model.config = dataclasses.replace(model.config, inference_latent="mean")
        mean_scores = (model(x)[0] * scale).cpu().numpy()
        posterior = model.vae.encode(x).latent_dist
        noise = float((posterior.std.mean() / posterior.mean.abs().mean()).cpu())
        model.config = dataclasses.replace(model.config, inference_latent="sample")
        draws = np.stack([(model(x)[0] * scale).cpu().numpy() for _ in range(args.draws)])
    spread = draws.std(axis=0)
    distance = np.abs(draws - mean_scores[None])
    rhos = [float(spearmanr(mean_scores, d).statistic) for d in draws]
    lines = [
        "# The authors' sampled latent against the posterior mean",
        "",
        f"Machine: {machine()}",
        f"Model: `{args.model}` ({'random weights: not the released teacher' if args.model in models.MODELS else 'checkpoint'})",
        f"Images: the {len(PHOTOGRAPHS)} demo photographs at {pre.size[0]}x{pre.size[1]}; {args.draws} draws each, "
        f"seed {args.seed}.",
        f"Command: `python bench/authors_latent.py --model {args.model} --draws {args.draws}`",
        "",
        "| | MOS points |",
        "| --- | ---: |",
        f"| spread of the mean-latent scores over the images (std) | {mean_scores.std():.3g} |",
        f"| an image's sampled scores: std, median over images | {statistics.median(spread.tolist()):.3g} |",
        f"| an image's sampled scores: std, largest | {spread.max():.3g} |",
        f"| sampled - mean-latent score: mean absolute | {distance.mean():.3g} |",
        f"| sampled - mean-latent score: largest absolute | {distance.max():.3g} |",
        "",
        f"Spearman of each draw's ranking with the mean-latent ranking: median {statistics.median(rhos):.3f}, "
        f"lowest {min(rhos):.3f}.",
        f"VAE posterior noise-to-signal (mean std / mean |mean| of the latent): {noise:.3g}.",
    ]
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
