"""Gives the unlabelled distorted rows of a ranking table a target: a model's own scores (issue 37's runs K-P).

A ranking table (`dpiqa.engine.training.data.rank_table_rows`, as `build_clive_tables.py` writes it) leaves its
distorted rows unlabelled: they are only ranked against their photograph. Fine-tuning the demo student's pooled
read-out on CLIVE-half then moves its scores on those rows freely, and the demo corpus's ranking of JPEG and
exposure suffered (run H). This writes a copy of the table whose distorted rows (`family` set, `level` > 0) carry a
target, regressed beside the ranking loss:

    target = score(row) + alpha * (MOS(source) - score(source))

`score` is `--model`'s (the stage-1 student: its scores on the distortions are what the fine-tune should keep),
`source` the row's `group` (a photograph of `--labels`, with its MOS on the same scale). `--alpha 0` keeps the
stage-1 scores as they are; `--alpha 1` moves every distortion of a photograph by that photograph's own correction
(the stage-1 student scores CLIVE-half 0.87 below its MOS on average), so that only the drops are kept.

    python recipes/anchor_rank_table.py --table ../runs-37/tables/train-g.csv --labels ../runs-37/tables/clive.csv \\
        --model ../runs-37/shipped-demo --alpha 0.5 --output ../runs-37/tables/train-m.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from dpiqa.engine.datasets.table import resolve_path

BATCH = 32


def score_paths(model: str, paths: list[str]) -> list[float]:
    """`model`'s scores (MOS units) of image files, in order; stops on the first that cannot be scored."""
    import dpiqa

    scorer = dpiqa.load_scorer(model, device="cpu")
    scores: list[float] = []
    for start in range(0, len(paths), BATCH):
        scores.extend(scorer.score(paths[start : start + BATCH]).score.tolist())
        print(f"scored {min(start + BATCH, len(paths))}/{len(paths)}", file=sys.stderr, flush=True)
    return scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", type=Path, required=True, help="the ranking table (CSV) to copy")
    ap.add_argument(
        "--labels", type=Path, required=True, help="the labelled set's table (path, mos, name): the sources' MOS"
    )
    ap.add_argument("--model", required=True, help="the model whose scores become the targets")
    ap.add_argument("--alpha", type=float, required=True, help="share of each source's correction added (0-1)")
    ap.add_argument("--output", type=Path, required=True, help="the anchored table (CSV) to write")
    args = ap.parse_args(argv)

    with open(args.table, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(args.labels, newline="") as f:
        labels = {r["name"]: (r["path"], float(r["mos"])) for r in csv.DictReader(f)}
    distorted = [r for r in rows if r["family"] and r["level"] not in ("", "0")]
    labelled = [r["name"] for r in distorted if r["mos"].strip()]
    if labelled:
        ap.error(f"{args.table}: {len(labelled)} distorted rows already have a target (first: {labelled[0]})")
    sources = sorted({r["group"] for r in distorted})
    unknown = [g for g in sources if g not in labels]
    if unknown:
        ap.error(f"{args.labels}: no MOS for {len(unknown)} sources of distorted rows (first: {unknown[0]})")

    # the table's own rule for its paths (relative to its folder; absolute or a URL as is)
    paths = [resolve_path(r["path"], str(args.table.parent)) for r in distorted]
    row_scores = score_paths(args.model, paths + [labels[g][0] for g in sources])
    source_scores = dict(zip(sources, row_scores[len(paths) :], strict=True))
    for row, score in zip(distorted, row_scores, strict=False):
        source = row["group"]
        row["mos"] = f"{score + args.alpha * (labels[source][1] - source_scores[source]):.6f}"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    offsets = [labels[g][1] - source_scores[g] for g in sources]
    print(
        f"{args.output}: {len(distorted)} distorted rows of {len(sources)} photographs anchored (alpha {args.alpha}; "
        f"mean correction MOS - score {sum(offsets) / len(offsets):+.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
