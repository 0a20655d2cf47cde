"""Arguments shared by `dpiqa train-teacher`, `dpiqa distill` and `dpiqa ablate`, and their translation to a
TrainConfig."""

from __future__ import annotations

import argparse
import sys

from dpiqa.jobs.args import (
    add_address,
    add_executor,
    add_old_spelling,
    add_precision,
    add_storage_options,
    epoch_list,
    key_values,
    location,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    split_fractions,
)
from dpiqa.models.checkpoint import WEIGHTS_DTYPES
from dpiqa.models.pretrained import CLIP_TEXT, STABLE_DIFFUSION

PROTOCOLS = {
    # ours: a validation part picks the epoch, the test part is touched once; the median over splits is reported
    "ours": {"fractions": (0.7, 0.1, 0.2), "splits": 1, "selection": "best validation SRCC"},
    # the paper's: 80/20 at random (seeded here), the last epoch, 10 repetitions
    "paper": {"fractions": (0.8, 0.0, 0.2), "splits": 10, "selection": "last epoch"},
}


def add_common(p: argparse.ArgumentParser, teacher: bool = False, student: bool = False) -> None:
    """The options of a training job; `teacher` and `student` add the options of building that model."""
    from dpiqa.engine.datasets import DATASETS

    data = p.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default=None,
        choices=sorted(k for k in DATASETS if k != "webdataset"),
        help="labelled dataset layout (see `dpiqa eval --help` for each one's files)",
    )
    data.add_argument(
        "--root", type=location, default=None, help="the dataset's root folder or URL (the table for csv)"
    )
    data.add_argument(
        "--dataset-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a layout option, e.g. resolution=512x384 for koniq (repeatable)",
    )
    data.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default="ours",
        help="ours (default): seeded 70/10/20 splits, the epoch picked on the validation part; "
        "paper: the paper's 80/20 splits, the last epoch, 10 repetitions (to compare with "
        "its table like for like)",
    )
    data.add_argument(
        "--splits",
        type=positive_int,
        default=None,
        help="repeated seeded splits, one model each (default: 1; 10 with --protocol paper)",
    )
    data.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the first split (default 0)")
    data.add_argument(
        "--fractions",
        type=split_fractions,
        default=None,
        help="train,val,test fractions (default: 0.7,0.1,0.2; 0.8,0,0.2 with --protocol paper)",
    )
    data.add_argument("--grouped", action="store_true", help="keep a group (AGIQA-3K: a prompt) on one side")
    data.add_argument(
        "--synthetic",
        type=nonnegative_int,
        default=0,
        metavar="N",
        help="add N distorted copies of each training image (graded blur, noise, JPEG, JPEG 2000, "
        "contrast, exposure) labelled reference MOS x (1 - 0.15 x level)",
    )
    data.add_argument(
        "--extra-train",
        default=None,
        metavar="TABLE",
        help="a ranking table (CSV: path, mos (empty = unlabelled), name, group, family, level) of "
        "graded distortions added to the training part only (recipes/build_ranking_set.py)",
    )
    data.add_argument(
        "--extra-val",
        default=None,
        metavar="TABLE",
        help="a ranking table added to the validation part: the epoch is picked by the mean of the "
        "validation SRCC and minus the mean per-source ranking SRCC",
    )
    proto = p.add_argument_group("optimisation (defaults: the paper's)")
    proto.add_argument(
        "--rank-weight",
        type=nonnegative_float,
        default=0.0,
        help="weight of a pairwise hinge ranking loss across distortion levels of one source "
        "(batches then hold whole groups); default 0: off",
    )
    proto.add_argument(
        "--rank-margin",
        type=positive_float,
        default=0.05,
        help="the ranking loss's margin in score units (MOS / scale; default 0.05)",
    )
    proto.add_argument("--epochs", type=positive_int, default=None)
    proto.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="the global batch, all workers together (each worker takes batch / workers); "
        "default the paper's: 16 for the teacher, 24 for the student",
    )
    proto.add_argument("--lr", type=positive_float, default=None)
    proto.add_argument(
        "--milestones", type=epoch_list, default=None, help="epochs of the x0.2 step decay, e.g. 5 or 10,25"
    )
    add_precision(
        proto,
        "auto: bf16 autocast on GPUs that have it (else fp16 with a gradient scaler, as the "
        "authors trained), fp32 on CPU; fp16 always uses the scaler",
    )
    model = p.add_argument_group("model")
    model.add_argument("--config", default=None, help="named configuration to start from (see `dpiqa model-info`)")
    model.add_argument("--init", type=location, default=None, help="start from this checkpoint (folder, URL or Hub id)")
    model.add_argument("--image-size", type=positive_int, default=None, help="override the input size")
    model.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="set a config field, e.g. text_adapter=false (repeatable)",
    )
    if teacher:
        model.add_argument(
            "--sd",
            default=None,
            help=f"teacher: Stable Diffusion v1.5 weights: Hub id ({STABLE_DIFFUSION}) or a diffusers "
            "folder/URL; required unless --random-prior or --init",
        )
        model.add_argument(
            "--clip",
            default=CLIP_TEXT,
            help=f"teacher: CLIP text model for the prompt embeddings (default {CLIP_TEXT})",
        )
        model.add_argument("--prompt-set", default=None, help="teacher: prompt set name (default: the 1485 prompts)")
        model.add_argument(
            "--random-prior",
            action="store_true",
            help="teacher: train on a randomly initialised VAE, U-Net and prompt embeddings on "
            "purpose (tests, ablations); the card says 'random prior'",
        )
    if student:
        model.add_argument(
            "--backbone",
            default=None,
            help="student: a backbone replacing torchvision/efficientnet_b7 (a timm name or "
            "torchvision/NAME; a speed tier)",
        )
        model.add_argument(
            "--backbone-weights",
            default=None,
            metavar="PATH_OR_URL",
            help="student: read the backbone's pretrained weights from this file (.pth or "
            ".safetensors, local or any fsspec URL) instead of downloading them",
        )
        model.add_argument(
            "--no-pretrained",
            action="store_true",
            help="student: train the backbone from random initialisation on purpose (default: "
            "ImageNet weights, which must be had)",
        )
    run = p.add_argument_group("execution")
    run.add_argument(
        "--output", type=location, required=True, help="checkpoint folder or URL (with --splits N: one per split)"
    )
    run.add_argument(
        "--weights-dtype",
        choices=WEIGHTS_DTYPES,
        default="float32",
        help="how the output checkpoint stores its weights: float16 or bfloat16 halve the file, and the test "
        "metrics in its card are measured on the rounded weights (not part of the run's identity: a rerun "
        "with another dtype resaves a trained run without training it again)",
    )
    run.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="Ray Train workers (DDP); the recipe (global batch, steps, lr) does not change with them",
    )
    run.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="cuda: one GPU per worker; auto (default): cuda when the cluster has a GPU for every worker, else cpu",
    )
    add_old_spelling(run, "--gpu", "--device cuda", "device", value="cuda")
    add_old_spelling(run, "--no-gpu", "--device cpu", "device", value="cpu")
    add_executor(
        run,
        auto="this process for one worker when no cluster is named (--address, RAY_ADDRESS), else Ray Train",
        ray="Ray Train's worker actors (worker failures are retried, --max-failures)",
        local="the training loop in this process (one worker; a failure ends the job, a rerun resumes)",
    )
    run.add_argument("--cpus-per-worker", type=positive_float, default=1.0)
    run.add_argument("--threads", type=positive_int, default=None, help="torch threads per worker on CPU")
    run.add_argument(
        "--max-failures", type=nonnegative_int, default=3, help="worker failures retried from the last checkpoint"
    )
    run.add_argument(
        "--cache-dir",
        type=location,
        default=None,
        help="a local folder keeping the teacher's outputs and a frozen backbone's features per image, "
        "so that a rerun after a kill resumes them (not part of the run's identity)",
    )
    run.add_argument(
        "--storage",
        type=location,
        default=None,
        help="the run's checkpoints (default OUTPUT/_train); a rerun of the same command resumes from them",
    )
    add_address(run)
    add_storage_options(run)


def model_spec(args: argparse.Namespace, kind: str):  # engine.training.model.ModelSpec
    """The `ModelSpec` the model options describe."""
    from dpiqa.engine.training.model import ModelSpec

    return ModelSpec(
        kind=kind,
        config=args.config,
        init=args.init,
        image_size=args.image_size,
        overrides=overrides(args),
        sd=getattr(args, "sd", None),
        clip=getattr(args, "clip", None),
        prompt_set=getattr(args, "prompt_set", None),
        random_prior=getattr(args, "random_prior", False),
        backbone=getattr(args, "backbone", None),
        pretrained_backbone=not getattr(args, "no_pretrained", False),
        backbone_weights=getattr(args, "backbone_weights", None),
    )


def config_from_args(args: argparse.Namespace, job: str, spec, **fields):
    """The `TrainConfig` of a training job's options; `fields` are the job's own (a teacher, shards, ...)."""
    from dpiqa.engine.splits import SplitConfig
    from dpiqa.engine.training.run import TrainConfig, TrainRun

    protocol = PROTOCOLS[args.protocol]
    fractions = args.fractions or protocol["fractions"]
    return TrainConfig(
        job=job,
        output=args.output,
        model=spec,
        dataset=args.dataset,
        root=args.root,
        dataset_options=key_values(args.dataset_option, parse_json=True, option="--dataset-option"),
        split=SplitConfig(
            fractions=fractions, n_splits=args.splits or protocol["splits"], seed=args.seed, grouped=args.grouped
        ),
        protocol_name=args.protocol,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        milestones=args.milestones,
        synthetic=args.synthetic,
        extra_train=args.extra_train,
        extra_val=args.extra_val,
        rank_weight=args.rank_weight,
        rank_margin=args.rank_margin,
        precision=args.precision,
        run=TrainRun(
            workers=args.workers,
            use_gpu={"auto": None, "cuda": True, "cpu": False}[args.device],
            cpus_per_worker=args.cpus_per_worker,
            threads=args.threads,
            max_failures=args.max_failures,
            cache_dir=args.cache_dir,
            executor=args.executor,
        ),
        storage=args.storage,
        storage_options=args.storage_options,
        command=["dpiqa", *sys.argv[1:]],
        weights_dtype=None if args.weights_dtype == "float32" else args.weights_dtype,
        **fields,
    )


def overrides(args: argparse.Namespace) -> dict:
    return key_values(args.set, parse_json=True, option="--set")


def report(result) -> int:
    selection = result.summary.get("selection", "best validation SRCC")
    print(f"protocol {result.summary.get('protocol', 'ours')}: epoch chosen by {selection}")
    for split in result.splits:
        test = split["metrics"].get("test") or {}
        srcc = f"test SRCC {test['srcc']:.4f} PLCC {test['plcc']:.4f}" if test else "no test split"
        print(f"split {split['seed']}: {srcc}, epoch {split['best_epoch']} -> {split['output']}")
    median = result.summary.get("median")
    if median and len(result.splits) > 1:
        print(
            f"median over {len(result.splits)} splits: SRCC {median['srcc']['median']:.4f} "
            f"PLCC {median['plcc']['median']:.4f}"
        )
    return 0
