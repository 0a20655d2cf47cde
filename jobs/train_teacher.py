"""`dpiqa train-teacher`: train the DP-IQA teacher on a labelled dataset with Ray Train."""

from __future__ import annotations

import argparse

from jobs import training


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-teacher", help="train the DP-IQA teacher (Ray Train, DDP; resumable)",
        description="Train the teacher with the paper's protocol (Adam 1e-5, batch 16, 30 epochs, step decay) "
                    "on seeded splits, select the epoch on the validation split, report test metrics, and save "
                    "the best checkpoint with its card. Rerunning the same command resumes a killed run.",
    )
    p.add_argument("--sd", default=None,
                   help="Stable Diffusion v1.5 weights: Hub id (runwayml/stable-diffusion-v1-5) or diffusers folder/URL")
    p.add_argument("--clip", default="openai/clip-vit-large-patch14", help="CLIP text model for the prompt embeddings")
    p.add_argument("--prompt-set", default=None, help="prompt set name (default: the 1485 quality prompts)")
    training.add_common(p)
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    from engine.training.loop import ModelSpec
    from engine.training.run import run_training

    spec = ModelSpec(kind="teacher", config=args.config, init=args.init, sd=args.sd, clip=args.clip,
                     prompt_set=args.prompt_set, image_size=args.image_size, overrides=training.overrides(args))
    config = training.config_from_args(args, "train-teacher", spec)
    return training.report(run_training(config, address=args.address))
