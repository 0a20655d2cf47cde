"""`dpiqa convert`: the DP-IQA authors' released teacher or student file -> one of our checkpoint folders."""

from __future__ import annotations

import argparse

from dpiqa.jobs.args import add_storage_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert the DP-IQA authors' released checkpoints (.pth, .onnx) into a dpiqa checkpoint",
        description="Convert a teacher ({dataset}_model_{plcc,srcc}_best.pth) or student "
        "({dataset}_student_model_{plcc,srcc}_best.pth) state dict released by the DP-IQA authors, or their "
        "KonIQ student_model.onnx, into a checkpoint folder that every dpiqa command takes (--model OUT). "
        "The .pth is read with torch.load(weights_only=True): a file holding anything but tensors is refused. "
        "Every key is mapped onto our modules or dropped because their code never uses it; an unexpected "
        "or missing key, or another shape, stops the conversion naming it. The weights are licensed "
        "CC BY-NC-SA by their authors (non-commercial use only); the card says so.",
    )
    p.add_argument("source", metavar="FILE", help="the authors' .pth or .onnx (local path or fsspec URL)")
    p.add_argument("--output", required=True, help="checkpoint folder to write (local or fsspec URL)")
    p.add_argument(
        "--clip",
        default=None,
        help="teacher only: the CLIP model that embeds the 1,485 prompts (not in their file): "
        "openai/clip-vit-large-patch14 or a folder/URL holding it",
    )
    p.add_argument(
        "--sd",
        default=None,
        help="teacher only, for a file without the VAE encoder: a Stable Diffusion v1.5 folder/URL/Hub id to "
        "take it from (refused when the file has it)",
    )
    p.add_argument(
        "--dataset",
        choices=["koniq", "clive", "livefb", "spaq"],
        default=None,
        help="what it was trained on, for the card (default: from the released file name)",
    )
    p.add_argument(
        "--latent",
        choices=["mean", "sample"],
        default="mean",
        help="teacher only: the VAE latent at inference: mean (deterministic, default) or sample (the "
        "authors' way: scores vary from run to run)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint at --output")
    add_storage_options(p)
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    from dpiqa.models.authors import convert

    card = convert(
        args.source,
        args.output,
        clip=args.clip,
        sd=args.sd,
        dataset=args.dataset,
        inference_latent=args.latent,
        overwrite=args.overwrite,
        storage_options=args.storage_options,
    )
    summary = card.get("conversion", {})
    print(
        f"converted {card['source']['file']} ({card['source']['sha256'][:19]}..., {card['trained_on']['name']}) "
        f"-> {args.output}: {summary.get('mapped', 'the ONNX graph')} "
        f"{'keys mapped' if 'mapped' in summary else 'wrapped'}"
        + (f", {sum(summary['dropped'].values())} unused dropped" if summary.get("dropped") else "")
        + f"; identity {card['sha256']}; weights licensed {card['licence']['weights']} (non-commercial)"
    )
    return 0
