"""Measures how well a model ranks a ranking table's distortion levels (for the demo checkpoint's card).

How well a model ranks the distortion levels of a ranking table (`recipes/build_ranking_set.py`): per
family, the mean over sources of Spearman's rho between level (the reference at 0) and score, and overall.
Used for the held-out photographs' table `val-extra.csv` (12 families that are not in the demo corpus) as
a proxy for defects the demo corpus does not show.

    python recipes/rank_table_eval.py --model models/checkpoints/demo --table ../runs/ranking/val-extra.csv \\
        --output ../runs/demo-eval/student-val-extra.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from dpiqa.models.run_options import RunOptions

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="checkpoint, shipped name or brisque")
    ap.add_argument("--table", required=True)
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import pandas as pd
    import torch
    from scipy.stats import spearmanr

    from dpiqa import models
    from dpiqa.engine.stages.decode import decode_image

    torch.set_num_threads(args.threads)
    df = pd.read_csv(args.table, keep_default_na=False)
    base = Path(args.table).parent
    scorer = models.load_scorer(args.model, RunOptions(device="cpu"))
    scores = []
    for start in range(0, len(df), 32):
        part = df.iloc[start : start + 32]
        decoded = [decode_image((base / p).read_bytes(), scorer.preprocessing) for p in part["path"]]
        images, statistics = np.stack([d.pixels for d in decoded]), np.stack([d.statistics for d in decoded])
        scores += [float(s) for s in np.asarray(scorer(images, statistics=statistics).scores)]
    df["score"] = scores
    rhos = defaultdict(list)
    for (_group, family), rows in df[df["level"] > 0].groupby(["group", "family"]):
        ref = df[(df["group"] == _group) & (df["level"] == 0)].iloc[:1]
        both = pd.concat([ref, rows])
        rho = spearmanr(both["level"], both["score"]).statistic
        if np.isfinite(rho):
            rhos[family].append(rho)
    result = {
        "model": args.model,
        "table": args.table,
        "images": len(df),
        "per_family": {k: float(np.mean(v)) for k, v in sorted(rhos.items())},
        "overall": float(np.mean([r for v in rhos.values() for r in v])),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
