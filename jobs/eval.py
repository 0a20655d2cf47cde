"""`dpiqa eval`: SRCC, KRCC, PLCC (raw and logistic-fitted) and RMSE of a model on a labelled dataset."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    from engine.datasets import DATASETS

    p = sub.add_parser(
        "eval", help="evaluate a model on a labelled dataset (SRCC/KRCC/PLCC/RMSE)",
        description="Score a dataset's images with a model and compare with the human MOS. With --split test "
                    "(the default) the split is the one recorded in the model's card when it was trained on the "
                    "same dataset, so the test images are the ones training never saw.",
        epilog="layouts: " + "; ".join(f"{k}: {v.description}" for k, v in DATASETS.items()),
    )
    p.add_argument("--model", required=True, help="checkpoint folder/URL/Hub id, shipped name or named config")
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="dataset layout")
    p.add_argument("--root", required=True, help="dataset root folder or URL (the table for csv)")
    p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--split", choices=["test", "val", "train", "all"], default="test")
    p.add_argument("--seed", type=int, default=None, help="split seed (default: the model card's)")
    p.add_argument("--fractions", default=None, help="train,val,test fractions (default: the model card's)")
    p.add_argument("--grouped", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--storage-options", type=json.loads, default=None)
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    import numpy as np

    import models
    from engine.datasets import load_dataset
    from engine.evaluate import evaluate
    from engine.splits import make_split
    from jobs.training import _pairs

    labeled = load_dataset(args.dataset, args.root, storage_options=args.storage_options,
                           **_pairs(args.dataset_option, parse_json=True))
    info = models.describe(args.model)
    recorded = (info.card.get("training") or {}).get("split") if (info.card.get("training") or {}).get(
        "dataset") == args.dataset else None
    if args.split == "all":
        indices, split_info = np.arange(len(labeled)), {"part": "all"}
    else:
        if args.seed is None and recorded is None:
            raise ValueError(f"{args.model}: its card records no split of {args.dataset}; pass --seed (and "
                             "--fractions) or use --split all")
        seed = args.seed if args.seed is not None else recorded["seed"]
        fractions = tuple(float(x) for x in args.fractions.split(",")) if args.fractions else tuple(
            recorded["fractions"] if recorded else (0.7, 0.1, 0.2))
        grouped = args.grouped if args.grouped is not None else bool(recorded and recorded.get("grouped"))
        split = make_split(labeled.names, seed, fractions, groups=labeled.groups if grouped else None)
        indices = split.part(args.split)
        split_info = {"part": args.split, "seed": seed, "fractions": list(fractions), "grouped": grouped}
    scorer = models.load_scorer(args.model, device=args.device)
    metrics = evaluate(scorer, labeled, indices, batch_size=args.batch_size, storage_options=args.storage_options)
    result = {"model": args.model, "checkpoint_hash": info.checkpoint_hash, "dataset": args.dataset,
              "root": args.root, "split": split_info, "metrics": metrics}
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        m = metrics
        print(f"{args.model} on {args.dataset} ({split_info['part']}, {m['n']} images): SRCC {m['srcc']:.4f} "
              f"KRCC {m['krcc']:.4f} PLCC {m['plcc']:.4f} (logistic {m['plcc_logistic']:.4f}) RMSE {m['rmse']:.4f}")
    return 0
