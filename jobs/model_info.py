"""`dpiqa model-info`: architecture, parameter counts, input size and FLOPs of a model, without its weights."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model-info",
        help="parameter counts and FLOPs of a named model or checkpoint (no weights needed)",
        description="Describe a named configuration (dpiqa-teacher, dpiqa-student, ...-tiny) or a checkpoint "
        "(folder, fsspec URL, Hub id) from its config alone: the model is built on the meta device, "
        "so full-size models need no memory and no weights.",
    )
    p.add_argument("model", metavar="NAME_OR_PATH", help="named configuration, shipped name or checkpoint location")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--set",
        dest="overrides",
        metavar="FIELD=VALUE",
        action="append",
        type=parse_override,
        default=[],
        help="replace a config field of a named configuration, VALUE as JSON (else a string), e.g. the "
        "ablation switches text_adapter=false, image_adapter=false, prompt_set=empty-1, "
        "prompt_pooling=mean, timestep=500, decoder_levels=[0,1]; repeatable",
    )
    p.set_defaults(run=main)


def parse_override(text: str) -> tuple[str, object]:
    """`FIELD=VALUE` -> (field, value): VALUE parsed as JSON where it is JSON, else kept as a string."""
    field, sep, raw = text.partition("=")
    if not sep or not field:
        raise argparse.ArgumentTypeError(f"--set wants FIELD=VALUE, not {text!r}")
    try:
        return field, json.loads(raw)
    except json.JSONDecodeError:
        return field, raw


def main(args: argparse.Namespace) -> int:
    from dpiqa.models.info import model_info

    info = model_info(args.model, dict(args.overrides) or None)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(format_table(info))
    return 0


def format_table(info: dict) -> str:
    """The human-readable form of `dpiqa.models.info.model_info`."""
    size = "x".join(map(str, info["input_size"]))
    lines = [
        f"model            {info['name']}",
        f"architecture     {info['architecture']}",
        f"{'checkpoint hash' if info['is_checkpoint'] else 'identity':<16} {info['checkpoint_hash']}",
        f"input            3x{size}, values in {info['preprocessing']['value_range']}, "
        f"{info['preprocessing']['interpolation']} resize",
        f"quality map      {'x'.join(map(str, info['map_shape']))}",
    ]
    if "switches" in info:
        changed = info["ablation"]
        lines.append(
            "switches         "
            + (", ".join(f"{k}={json.dumps(v)}" for k, v in changed.items()) if changed else "none (the paper's model)")
        )
    lines += [
        "",
        f"{'part':<16} {'parameters':>15} {'GFLOP/image':>12}"
        + (f" {'GFLOP (cached)':>15}" if "flops_inference" in info else ""),
    ]
    flops, cached = info["flops"], info.get("flops_inference")
    params = info["parameters"]
    for part in [k for k in params if k not in ("total", "trainable", "frozen")] + ["total"]:
        row = f"{part:<16} {params[part]:>15,} {flops.get(part, 0) / 1e9:>12.2f}"
        if cached is not None:
            row += f" {cached.get(part, 0) / 1e9:>15.2f}"
        lines.append(row)
    lines += [
        f"{'trainable':<16} {params['trainable']:>15,}",
        f"{'frozen':<16} {params['frozen']:>15,}",
        f"{'buffers':<16} {info['buffers']:>15,}",
        "",
        f"FLOPs: {info['flops_note']}.",
    ]
    if cached is not None:
        lines.append(
            "cached: after prepare_for_inference() (prompt context and cross-attention keys/values "
            "computed once per model, not per batch)."
        )
    return "\n".join(lines)
