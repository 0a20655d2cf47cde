"""Builds the CLIVE-half tables of the demo checkpoint's fine-tuning (train_demo_checkpoint.sh, stage 2).

The demo checkpoint's tables with authentic photographs: CLIVE-half as the labelled set (its MOS on AGIQA-3K's
0-5 scale, split into training and validation parts by `dpiqa distill`'s own seeded split), graded synthetic
distortions of its photographs, and AGIQA-3K images beside them, for `dpiqa distill --extra-train/--extra-val`;
and label tables of each CLIVE-half part for `dpiqa eval --dataset csv`.

CLIVE-half (`../shared/datasets/clive-half/`: 581 authentic photographs, MOS 0-100) is split by
`dpiqa.engine.splits.make_split` (seed `--seed`, `--val-fraction` to validation, nothing to test: the other
half of CLIVE, kept outside this project, is the test), as `dpiqa distill --dataset csv --root clive.csv
--dataset-option name_column=name --fractions 0.8,0.2,0 --seed 0` splits it; `split.json` lists the names of
each part.

Written under `--output` (outside the repository; nothing is copied from the dataset: rows point at its files):

- `clive.csv`: `path` (absolute), `mos` (MOS x 5 / 100: the student regresses AGIQA-3K's 0-5 scale), `name` (the
  path as `labels.csv` writes it, so that the split is the one `split.json` lists): the labelled set;
- `clive-train.csv`, `clive-val.csv`: `path`, `mos` (0-100) of each part, for `dpiqa eval --dataset csv --root
  ... --split all`;
- `train.csv` (a ranking table, `dpiqa.engine.training.data.rank_table_rows`): for the first `--train-ranked`
  CLIVE training photographs, `--families` seeded families at `--levels`, unlabelled, in the photograph's
  group (ranked against the labelled photograph; not regressed: an authentic photograph's own defects make a
  pseudo-label doubtful); and the first `--agiqa-train` images of AGIQA-3K's training part (grouped split,
  `--agiqa-seed`) with their MOS (level 0 of groups of their own: regressed, so that the head keeps AGIQA-3K);
- `val.csv`: the first `--val-ranked` CLIVE validation photographs with `--val-families` families at levels 1-5
  (unlabelled: the validation ranking) and AGIQA-3K's validation part with its MOS (its SRCC joins the
  selection as `val_table_srcc`).

Families are drawn from every family of `dpiqa.engine.distortions.ALL_DISTORTIONS` (the demo corpus's, the
training-only ones and the camera defects), the demo corpus's (motion blur included) with weight 2.

    python recipes/build_clive_tables.py --clive ../shared/datasets/clive-half \\
        --agiqa ../shared/datasets/agiqa3k --output ../runs-37/tables
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "recipes"))

from build_ranking_set import rng_for, save  # noqa: E402

from dpiqa.engine.demo import FAMILIES as DEMO_FAMILIES  # noqa: E402
from dpiqa.engine.distortions import ALL_DISTORTIONS, LEVELS, distort  # noqa: E402

CLIVE_TO_AGIQA = 5.0 / 100.0  # CLIVE's 0-100 MOS onto AGIQA-3K's 0-5 (the student's mos_scale)
HEADER = ["path", "mos", "name", "group", "family", "level"]


def pick_families(rng: np.random.Generator, k: int) -> list[str]:
    kinds = list(ALL_DISTORTIONS)
    weights = np.asarray([2.0 if kind in DEMO_FAMILIES else 1.0 for kind in kinds])
    return [str(f) for f in rng.choice(kinds, size=k, replace=False, p=weights / weights.sum())]


def clive_rows(job: tuple) -> list[list]:
    """One CLIVE photograph's distortions: `k` seeded families (or the family `k` names) at `levels`, unlabelled,
    in the photograph's group."""
    path, name, out, k, levels = job
    stem = Path(name).stem
    rows = []
    img = Image.open(path).convert("RGB")
    for kind in [k] if isinstance(k, str) else pick_families(rng_for("clive-families", stem), k) if k else []:
        for level in levels:
            file = out / "images" / f"clive__{stem}__{kind}-{level}.png"
            seed = int(rng_for(stem, kind, level).integers(2**31))
            save(lambda kind=kind, level=level, seed=seed: distort(img, kind, level, seed=seed), file)
            rows.append([f"images/{file.name}", "", f"{name}#{kind}-{level}", name, kind, level])
    return rows


def labelled_rows(items: list) -> list[list]:
    """Labelled images (`LabeledImage`s) as level-0 rows of groups of their own: regressed, no family."""
    return [[str(Path(it.path).resolve()), f"{it.mos:.6f}", it.name, it.name, "", 0] for it in items]


def write(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    print(f"{path}: {len(rows)} rows", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clive", type=Path, required=True, help="the CLIVE-half folder (labels.csv + images/)")
    ap.add_argument("--agiqa", required=True, help="the AGIQA-3K folder (data.csv + images/)")
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0, help="CLIVE-half's train/validation split seed (default 0)")
    ap.add_argument("--val-fraction", type=float, default=0.2, help="CLIVE-half's validation part (default 0.2)")
    ap.add_argument("--agiqa-seed", type=int, default=0, help="AGIQA-3K's grouped split (default 0)")
    ap.add_argument("--families", type=int, default=1, help="families per ranked training photograph (default 1)")
    ap.add_argument("--levels", default="1,2,3,4,5", help="the training families' levels (default 1,2,3,4,5)")
    ap.add_argument(
        "--train-ranked",
        type=int,
        default=None,
        help="how many CLIVE training photographs (the first in the split's order) get families (default: all)",
    )
    ap.add_argument(
        "--more",
        action="append",
        default=[],
        metavar="FAMILY:N",
        help="N further CLIVE training photographs (after the --train-ranked ones) with FAMILY at --levels (repeatable)",
    )
    ap.add_argument("--train-name", default="train.csv", help="the training table's file name (default train.csv)")
    ap.add_argument("--val-name", default="val.csv", help="the validation table's file name (default val.csv)")
    ap.add_argument("--val-families", type=int, default=1, help="families per ranked validation photograph (default 1)")
    ap.add_argument(
        "--val-ranked",
        type=int,
        default=None,
        help="how many validation photographs (the first in the split's order) get families (default: all)",
    )
    ap.add_argument(
        "--agiqa-train",
        type=int,
        default=300,
        help="how many AGIQA-3K training images (the first in the split's order) join with their MOS (default 300)",
    )
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    levels = tuple(int(x) for x in args.levels.split(","))
    if not levels or any(lv not in LEVELS for lv in levels):
        raise SystemExit(f"--levels {args.levels!r}: expected levels among {LEVELS}")

    from dpiqa.engine.datasets import load_dataset
    from dpiqa.engine.splits import make_split

    clive = load_dataset("csv", str(args.clive / "labels.csv"))
    fractions = (1 - args.val_fraction, args.val_fraction, 0.0)
    split = make_split(clive.names, args.seed, fractions)
    parts = {"train": [clive[int(i)] for i in split.train], "val": [clive[int(i)] for i in split.val]}
    out = args.output.resolve()
    (out / "images").mkdir(parents=True, exist_ok=True)
    write(
        out / "clive.csv",
        ["path", "mos", "name"],
        [[str(Path(it.path).resolve()), f"{it.mos * CLIVE_TO_AGIQA:.6f}", it.name] for it in clive],
    )
    for part, items in parts.items():
        write(out / f"clive-{part}.csv", ["path", "mos"], [[str(Path(it.path).resolve()), it.mos] for it in items])
    agiqa = load_dataset("agiqa3k", args.agiqa)
    asplit = make_split(agiqa.names, args.agiqa_seed, (0.7, 0.1, 0.2), groups=agiqa.groups)

    def jobs(items: list, k: int, ranked: int | None, levels: tuple[int, ...]) -> list[tuple]:
        return [(it.path, it.name, out, k, levels) for it in items[: len(items) if ranked is None else ranked]]

    more, first = [], len(parts["train"]) if args.train_ranked is None else args.train_ranked
    for spec in args.more:
        family, n = spec.rsplit(":", 1)
        if family not in ALL_DISTORTIONS:
            raise SystemExit(f"--more {spec}: unknown family {family!r}")
        more += [(it.path, it.name, out, family, levels) for it in parts["train"][first : first + int(n)]]
        first += int(n)

    with ProcessPoolExecutor(args.workers) as pool:
        val = [
            r
            for rows in pool.map(
                clive_rows, jobs(parts["val"], args.val_families, args.val_ranked, LEVELS), chunksize=4
            )
            for r in rows
        ]
        write(out / args.val_name, HEADER, val + labelled_rows([agiqa[int(i)] for i in asplit.val]))
        train = [
            r
            for rows in pool.map(
                clive_rows, jobs(parts["train"], args.families, args.train_ranked, levels) + more, chunksize=4
            )
            for r in rows
        ]
    write(
        out / args.train_name, HEADER, train + labelled_rows([agiqa[int(i)] for i in asplit.train[: args.agiqa_train]])
    )
    manifest = {
        "clive_half_split": {
            "seed": args.seed,
            "fractions": list(fractions),
            "train": sorted(it.name for it in parts["train"]),
            "val": sorted(it.name for it in parts["val"]),
        },
        "agiqa3k_split": {"seed": args.agiqa_seed, "grouped": True, "train_images_used": args.agiqa_train},
        "options": {k: str(v) for k, v in vars(args).items()},
    }
    (out / "split.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"CLIVE-half: {len(parts['train'])} training, {len(parts['val'])} validation photographs", flush=True)


if __name__ == "__main__":
    main()
