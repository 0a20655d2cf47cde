"""Arguments shared by `dpiqa train-teacher` and `dpiqa distill`, and their translation to a TrainConfig."""

from __future__ import annotations

import argparse
import sys

from jobs.args import (
    add_address,
    add_storage_options,
    key_values,
    nonnegative_int,
    positive_float,
    positive_int,
)


def add_common(p: argparse.ArgumentParser) -> None:
    from engine.datasets import DATASETS

    data = p.add_argument_group("data")
    data.add_argument("--dataset", default=None, choices=sorted(k for k in DATASETS if k != "webdataset"),
                      help="labelled dataset layout (see `dpiqa eval --help` for each one's files)")
    data.add_argument("--root", default=None, help="the dataset's root folder or URL (the table for csv)")
    data.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                      help="a layout option, e.g. resolution=512x384 for koniq (repeatable)")
    data.add_argument("--splits", type=positive_int, default=1, help="repeated seeded splits, one model each (default 1)")
    data.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the first split (default 0)")
    data.add_argument("--fractions", default="0.7,0.1,0.2", help="train,val,test fractions (default 0.7,0.1,0.2)")
    data.add_argument("--grouped", action="store_true", help="keep a group (AGIQA-3K: a prompt) on one side")
    data.add_argument("--synthetic", type=nonnegative_int, default=0, metavar="N",
                      help="add N distorted copies of each training image (graded blur, noise, JPEG, JPEG 2000, "
                           "contrast, exposure) labelled reference MOS x (1 - 0.15 x level)")
    proto = p.add_argument_group("protocol (defaults: the paper's)")
    proto.add_argument("--epochs", type=positive_int, default=None)
    proto.add_argument("--batch-size", type=positive_int, default=None)
    proto.add_argument("--lr", type=positive_float, default=None)
    proto.add_argument("--milestones", default=None, help="epochs of the x0.2 step decay, e.g. 5 or 10,25")
    proto.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                       help="auto: bf16 autocast on GPU, fp32 on CPU")
    model = p.add_argument_group("model")
    model.add_argument("--config", default=None, help="named configuration to start from (see `dpiqa model-info`)")
    model.add_argument("--init", default=None, help="start from this checkpoint (folder, URL or Hub id)")
    model.add_argument("--image-size", type=positive_int, default=None, help="override the input size")
    model.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                       help="set a config field, e.g. text_adapter=false (repeatable)")
    run = p.add_argument_group("execution")
    run.add_argument("--output", required=True, help="checkpoint folder or URL (with --splits N: one per split)")
    run.add_argument("--workers", type=positive_int, default=1, help="Ray Train workers (DDP)")
    run.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                     help="one GPU per worker (default: when the cluster has enough GPUs)")
    run.add_argument("--cpus-per-worker", type=positive_float, default=1.0)
    run.add_argument("--threads", type=positive_int, default=None, help="torch threads per worker on CPU")
    run.add_argument("--max-failures", type=nonnegative_int, default=3, help="worker failures retried from the last checkpoint")
    run.add_argument("--storage", default=None, help="Ray Train run storage (default OUTPUT/_train); rerun resumes")
    add_address(run)
    add_storage_options(run)


def config_from_args(args: argparse.Namespace, job: str, spec):  # noqa: ANN001
    from engine.splits import SplitConfig
    from engine.training.run import TrainConfig

    fractions = tuple(float(x) for x in args.fractions.split(","))
    return TrainConfig(
        job=job, output=args.output, model=spec, dataset=args.dataset, root=args.root,
        dataset_options=key_values(args.dataset_option, parse_json=True, option="--dataset-option"),
        split=SplitConfig(fractions=fractions, n_splits=args.splits, seed=args.seed, grouped=args.grouped),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        milestones=tuple(int(m) for m in args.milestones.split(",")) if args.milestones else None,
        synthetic=args.synthetic, precision=args.precision, workers=args.workers, use_gpu=args.gpu, cpus_per_worker=args.cpus_per_worker,
        threads=args.threads, max_failures=args.max_failures, storage=args.storage,
        storage_options=args.storage_options, command=["dpiqa", *sys.argv[1:]],
    )


def overrides(args: argparse.Namespace) -> dict:
    return key_values(args.set, parse_json=True, option="--set")


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
