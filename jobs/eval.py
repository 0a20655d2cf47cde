"""`dpiqa eval`: SRCC, KRCC, PLCC (raw and logistic-fitted) and RMSE of models on labelled datasets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dpiqa.errors import UsageError
from dpiqa.jobs.args import (
    add_run_options,
    add_storage_options,
    key_values,
    location,
    nonnegative_int,
    positive_int,
    run_options,
    split_fractions,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from dpiqa.engine.datasets import DATASETS

    p = sub.add_parser(
        "eval",
        help="evaluate models on labelled datasets (SRCC/KRCC/PLCC/RMSE; cross-dataset matrices)",
        description="Score a dataset's images with a model and compare with the human MOS. With --split test "
        "(the default) the split is the one recorded in the model's card when it was trained on the "
        "same dataset, so the test images are the ones training never saw. Several --model and "
        "several --dataset/--root pairs give a train-on-A / test-on-B matrix (--table writes it as "
        "markdown); a model meets a dataset it was not trained on on every image.",
        epilog="layouts: " + "; ".join(f"{k}: {v.description}" for k, v in DATASETS.items()),
    )
    p.add_argument(
        "--model",
        type=location,
        required=True,
        action="append",
        help="checkpoint folder/URL/Hub id, shipped name or named config (repeatable)",
    )
    p.add_argument(
        "--dataset",
        required=True,
        action="append",
        choices=sorted(DATASETS),
        help="dataset layout (repeatable; the n-th --dataset goes with the n-th --root)",
    )
    p.add_argument(
        "--root", type=location, required=True, action="append", help="dataset root folder or URL (the table for csv)"
    )
    p.add_argument(
        "--dataset-option",
        action="append",
        default=[],
        metavar="[DATASET.]KEY=VALUE",
        help="layout option, e.g. csv.group_column=group (for that dataset) or KEY=VALUE (for all)",
    )
    p.add_argument("--split", choices=["test", "val", "train", "all"], default="test")
    p.add_argument("--seed", type=nonnegative_int, default=None, help="split seed (default: the model card's)")
    p.add_argument(
        "--fractions", type=split_fractions, default=None, help="train,val,test fractions (default: the model card's)"
    )
    p.add_argument("--grouped", action=argparse.BooleanOptionalAction, default=None)
    add_run_options(p)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--table", type=location, default=None, help="write the results as a markdown table here")
    add_storage_options(p)
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:

    from dpiqa import models
    from dpiqa.engine.datasets import load_dataset
    from dpiqa.engine.evaluate import evaluate, matrix_markdown, shown, split_indices
    from dpiqa.storage import get_fs

    if len(args.dataset) != len(args.root):
        raise UsageError(f"{len(args.dataset)} --dataset but {len(args.root)} --root: give one root per dataset")
    matrix = len(args.model) > 1 or len(args.dataset) > 1
    options = key_values(args.dataset_option, parse_json=True, option="--dataset-option")

    def options_for(dataset: str) -> dict:
        mine = {k.split(".", 1)[1]: v for k, v in options.items() if k.startswith(f"{dataset}.")}
        return {**{k: v for k, v in options.items() if "." not in k}, **mine}

    fractions = args.fractions
    labels = model_labels(args.model)
    results = []
    for dataset, root in zip(args.dataset, args.root, strict=True):
        labeled = load_dataset(dataset, root, storage_options=args.storage_options, **options_for(dataset))
        for name in args.model:
            info = models.describe(name)
            indices, split = split_indices(
                labeled, info.card, dataset, args.split, args.seed, fractions, args.grouped, fallback_all=matrix
            )
            scorer = models.load_scorer(name, run_options(args))
            metrics = evaluate(
                scorer, labeled, indices, batch_size=args.batch_size, storage_options=args.storage_options
            )
            trained_on = (info.card.get("training") or {}).get("dataset") or "not trained here"
            results.append(
                {
                    "model": name,
                    "checkpoint_hash": info.checkpoint_hash,
                    "dataset": dataset,
                    "root": root,
                    "split": split,
                    "metrics": metrics,
                    "model_label": f"{labels[name]} ({trained_on})",
                    "dataset_label": dataset if args.dataset.count(dataset) == 1 else f"{dataset}:{root}",
                }
            )
    if args.table:  # a local path or a URL, written with --storage-options as every URL is
        fs, path = get_fs(args.table, args.storage_options)
        with fs.open(path, "wt") as f:
            f.write(matrix_markdown(results, "Cross-dataset evaluation" if matrix else "Evaluation"))
    if args.json:
        print(json.dumps(results if matrix else results[0], indent=2, sort_keys=True, allow_nan=False))
    else:
        for r in results:
            m = r["metrics"]
            print(
                f"{r['model']} on {r['dataset']} ({r['split']['part']}, {m['n']} images): SRCC {shown(m['srcc'])} "
                f"KRCC {shown(m['krcc'])} PLCC {shown(m['plcc'])} (logistic {shown(m['plcc_logistic'])}) "
                f"RMSE {shown(m['rmse'])}"
            )
    return 0


def model_labels(names: list[str]) -> dict[str, str]:
    """Short row names: a model's last path part, or as many trailing parts as tell it from the others
    (`teacher/split-0` and `student/split-0`)."""
    parts = {n: Path(n.rstrip("/")).parts or (n,) for n in names}
    labels = {}
    for n, p in parts.items():
        k = 1
        while k < len(p) and any(q[-k:] == p[-k:] for m, q in parts.items() if m != n):
            k += 1
        labels[n] = "/".join(p[-k:])
    return labels
