"""`dpiqa train-teacher`: train the DP-IQA teacher on a labelled dataset with Ray Train."""

from __future__ import annotations

import argparse

from dpiqa.jobs import training


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-teacher",
        help="train the DP-IQA teacher (Ray Train, DDP; resumable)",
        description="Train the teacher with the paper's protocol (Adam 1e-5, batch 16, 30 epochs, step decay) "
        "on seeded splits, select the epoch on the validation split, report test metrics, and save "
        "the best checkpoint with its card. Needs the Stable Diffusion v1.5 weights (--sd) and CLIP "
        "(--clip). Rerunning the same command resumes a killed run.",
    )
    training.add_common(p, teacher=True)
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    from dpiqa.engine.training.run import run_training

    config = training.config_from_args(args, "train-teacher", training.model_spec(args, "teacher"))
    return training.report(run_training(config, address=args.address))
