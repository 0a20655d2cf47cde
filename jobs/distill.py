"""`dpiqa distill`: distill a teacher into the DP-IQA student with Ray Train (labelled sets and/or shards)."""

from __future__ import annotations

import argparse

from dpiqa.jobs import training
from dpiqa.jobs.args import add_old_spelling, location, positive_float


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill",
        help="distill the student from a teacher (Ray Train, DDP; resumable)",
        description="Train the student with MSE(score, MOS/scale) + MSE(student map, teacher map). On a labelled "
        "dataset the teacher's outputs are computed once before training; at scale, stream WebDataset "
        "shards (--input) with the teacher's maps from `dpiqa score --write-maps` (--teacher-outputs); "
        "labels are used where present.",
    )
    p.add_argument(
        "--teacher",
        type=location,
        default=None,
        help="teacher checkpoint (its outputs on --dataset are computed first)",
    )
    p.add_argument(
        "--input",
        dest="shards",
        type=location,
        default=None,
        help="WebDataset shards to distill on (labelled where .json has a score): brace pattern, glob, "
        "prefix/folder, or a text file of URLs, as `dpiqa score --input` takes them",
    )
    add_old_spelling(p, "--shards", "--input", "shards", type=location)
    p.add_argument(
        "--teacher-outputs",
        type=location,
        default=None,
        help="a `dpiqa score --write-maps` run of the teacher on --input",
    )
    p.add_argument("--score-field", default="mos", help="score key in the shards' .json (default mos)")
    p.add_argument("--shard-mos-scale", type=positive_float, default=None, help="MOS scale of the shards' labels")
    p.add_argument(
        "--mode",
        choices=["feature", "score", "both", "none"],
        default="feature",
        help="teacher terms: feature (the paper's map MSE), score, both, none (labels only)",
    )
    training.add_common(p, student=True)
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    from dpiqa.engine.training.run import run_training

    config = training.config_from_args(
        args,
        "distill",
        training.model_spec(args, "student"),
        teacher=args.teacher,
        shards=args.shards,
        teacher_outputs=args.teacher_outputs,
        score_field=args.score_field,
        shard_mos_scale=args.shard_mos_scale,
        distill_mode=args.mode,
    )
    return training.report(run_training(config, address=args.address))
