"""Arguments shared by `dpiqa train-teacher` and `dpiqa distill`, and their translation to a TrainConfig."""

from __future__ import annotations

import argparse
import json
import sys


def add_common(p: argparse.ArgumentParser) -> None:
    from engine.datasets import DATASETS

    data = p.add_argument_group("data")
    data.add_argument("--dataset", default=None, choices=sorted(k for k in DATASETS if k != "webdataset"),
                      help="labelled dataset layout (see `dpiqa eval --help` for each one's files)")
    data.add_argument("--root", default=None, help="the dataset's root folder or URL (the table for csv)")
    data.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                      help="a layout option, e.g. resolution=512x384 for koniq (repeatable)")
    data.add_argument("--splits", type=int, default=1, help="repeated seeded splits, one model each (default 1)")
    data.add_argument("--seed", type=int, default=0, help="seed of the first split (default 0)")
    data.add_argument("--fractions", default="0.7,0.1,0.2", help="train,val,test fractions (default 0.7,0.1,0.2)")
    data.add_argument("--grouped", action="store_true", help="keep a group (AGIQA-3K: a prompt) on one side")
    data.add_argument("--synthetic", type=int, default=0, metavar="N",
                      help="add N distorted copies of each training image (graded blur, noise, JPEG, JPEG 2000, "
                           "contrast, exposure) labelled reference MOS x (1 - 0.15 x level)")
    proto = p.add_argument_group("protocol (defaults: the paper's)")
    proto.add_argument("--epochs", type=int, default=None)
    proto.add_argument("--batch-size", type=int, default=None)
    proto.add_argument("--lr", type=float, default=None)
    proto.add_argument("--milestones", default=None, help="epochs of the x0.2 step decay, e.g. 5 or 10,25")
    proto.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                       help="auto: bf16 autocast on GPU, fp32 on CPU")
    model = p.add_argument_group("model")
    model.add_argument("--config", default=None, help="named configuration to start from (see `dpiqa model-info`)")
    model.add_argument("--init", default=None, help="start from this checkpoint (folder, URL or Hub id)")
    model.add_argument("--image-size", type=int, default=None, help="override the input size")
    model.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                       help="set a config field, e.g. text_adapter=false (repeatable)")
    run = p.add_argument_group("execution")
    run.add_argument("--output", required=True, help="checkpoint folder or URL (with --splits N: one per split)")
    run.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP)")
    run.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                     help="one GPU per worker (default: when the cluster has enough GPUs)")
    run.add_argument("--cpus-per-worker", type=float, default=1.0)
    run.add_argument("--threads", type=int, default=None, help="torch threads per worker on CPU")
    run.add_argument("--max-failures", type=int, default=3, help="worker failures retried from the last checkpoint")
    run.add_argument("--storage", default=None, help="Ray Train run storage (default OUTPUT/_train); rerun resumes")
    run.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    run.add_argument("--storage-options", type=json.loads, default=None, help="fsspec options as JSON")


def _pairs(values: list[str], parse_json: bool) -> dict:
    out = {}
    for item in values:
        if "=" not in item:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        if parse_json:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        out[key] = value
    return out


def config_from_args(args: argparse.Namespace, job: str, spec):  # noqa: ANN001
    from engine.splits import SplitConfig
    from engine.training.run import TrainConfig

    fractions = tuple(float(x) for x in args.fractions.split(","))
    return TrainConfig(
        job=job, output=args.output, model=spec, dataset=args.dataset, root=args.root,
        dataset_options=_pairs(args.dataset_option, parse_json=True),
        split=SplitConfig(fractions=fractions, n_splits=args.splits, seed=args.seed, grouped=args.grouped),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        milestones=tuple(int(m) for m in args.milestones.split(",")) if args.milestones else None,
        synthetic=args.synthetic, precision=args.precision, workers=args.workers, use_gpu=args.gpu, cpus_per_worker=args.cpus_per_worker,
        threads=args.threads, max_failures=args.max_failures, storage=args.storage,
        storage_options=args.storage_options, command=["dpiqa", *sys.argv[1:]],
    )


def overrides(args: argparse.Namespace) -> dict:
    return _pairs(args.set, parse_json=True)


def report(result) -> int:  # noqa: ANN001
    for split in result.splits:
        test = split["metrics"].get("test") or {}
        srcc = f"test SRCC {test['srcc']:.4f} PLCC {test['plcc']:.4f}" if test else "no test split"
        print(f"split {split['seed']}: {srcc}, best epoch {split['best_epoch']} -> {split['output']}")
    median = result.summary.get("median")
    if median and len(result.splits) > 1:
        print(f"median over {len(result.splits)} splits: SRCC {median['srcc']['median']:.4f} "
              f"PLCC {median['plcc']['median']:.4f}")
    return 0
