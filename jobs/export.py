"""`dpiqa export`: a student checkpoint -> a validated ONNX folder that `dpiqa score` runs on onnxruntime."""

from __future__ import annotations

import argparse

from dpiqa.jobs.args import add_storage_options, location, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a student to ONNX (validated against PyTorch)",
        description="Export a DP-IQA student to one self-contained ONNX graph: input `images` uint8 "
        "(batch, H, W, 3) RGB at the model's input size, outputs `score` (MOS units) and `map`. "
        "Writes OUT/model.onnx, OUT/config.json and OUT/card.json (checkpoint and ONNX hashes, "
        "validation). The graph is "
        "checked with onnx.checker and compared with PyTorch on random images at batch 1 and "
        "--validate-batch; nothing is written unless the differences are within the tolerance of "
        "models/export.py (printed at the end). Score it with `dpiqa score --model OUT`.",
    )
    p.add_argument(
        "--model",
        type=location,
        required=True,
        help="student checkpoint folder/URL/Hub id, shipped name or named config (teachers do not export)",
    )
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format (default: onnx)")
    p.add_argument("--output", type=location, required=True, help="export folder (local or fsspec URL)")
    p.add_argument(
        "--opset", type=positive_int, default=None, help="ONNX opset (default: models.export.DEFAULT_OPSET, 18)"
    )
    p.add_argument(
        "--dynamic-batch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="symbolic batch axis (default); --no-dynamic-batch fixes it to --batch-size",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=1, help="the fixed batch of a --no-dynamic-batch export (default: 1)"
    )
    p.add_argument(
        "--validate-batch",
        type=positive_int,
        default=4,
        help="larger batch size a dynamic export is validated at, besides 1 (default: 4)",
    )
    p.add_argument(
        "--threads", type=positive_int, default=None, help="torch/onnxruntime threads for export and validation"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing export at --output")
    add_storage_options(p)
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    import torch

    from dpiqa.models.export import DEFAULT_OPSET, export_onnx

    if args.threads:
        torch.set_num_threads(args.threads)
    card = export_onnx(
        args.model,
        args.output,
        format=args.format,
        opset=args.opset or DEFAULT_OPSET,
        dynamic_batch=args.dynamic_batch,
        batch_size=args.batch_size,
        validate_batch=args.validate_batch,
        overwrite=args.overwrite,
        storage_options=args.storage_options,
    )
    onnx_card = card["onnx"]
    validation = onnx_card["validation"]
    score_diff = max(b["score_max_abs_diff"] for b in validation["batches"].values())
    map_diff = max(b["map_max_abs_diff"] for b in validation["batches"].values())
    batch = "dynamic" if args.dynamic_batch else f"fixed {args.batch_size}"
    print(
        f"exported {args.model} -> {args.output} ({onnx_card['bytes'] / 1e6:.1f} MB, "
        f"opset {onnx_card['opset']}, {batch} batch); vs PyTorch: max |score diff| {score_diff:.2g} MOS "
        f"(tolerance {validation['tolerance']['score']:g}), max |map diff| {map_diff:.2g} "
        f"(tolerance {validation['tolerance']['map']:g}); identity {card['sha256']}"
    )
    return 0
