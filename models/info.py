"""Parameter and FLOP counts of a named configuration or checkpoint, from its config alone (meta device)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dpiqa import models
from dpiqa.errors import UsageError
from dpiqa.models import checkpoint
from dpiqa.models.registry import json_text

log = logging.getLogger(__name__)

# What FlopCounterMode counts: matmuls, convolutions and attention, at 2 FLOPs per multiply-add.
FLOP_NOTE = (
    "matmul/conv/attention FLOPs (2 per multiply-add) for one image, counted on the meta device; "
    "elementwise, normalisation, softmax and resize ops are not counted"
)


def build_meta(name_or_path: str, overrides: dict[str, Any] | None = None) -> nn.Module:
    """The model of a named configuration (with `overrides` of its config fields) or of a checkpoint, built
    on the meta device (no memory, no weights)."""
    if name_or_path in models.MODELS:
        return models.build(name_or_path, device="meta", overrides=overrides).eval()
    location = models.resolve(name_or_path)
    data = checkpoint.read_json(location, checkpoint.CONFIG_NAME)
    if data is None:
        raise FileNotFoundError(f"{name_or_path}: no config.json (not a DP-IQA checkpoint or named model)")
    cls = models.model_class(data["architecture"])
    return cls.from_config(checkpoint.config_from_dict(cls.config_class, data), device="meta").eval()


def count_flops(model: nn.Module, size: tuple[int, int]) -> dict[str, int]:
    """FLOPs of one forward pass on a `(1, 3, *size)` meta input: `total` and one entry per model part."""
    x = torch.empty(1, 3, *size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    by_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    # FlopCounterMode names modules `<RootClass>.<fully qualified name>`.
    names = {id(m): f"{type(model).__name__}.{fqn}" for fqn, m in model.named_modules() if fqn}
    flops = {"total": int(counter.get_total_flops())}
    for part, modules in model.parts().items():
        flops[part] = sum(_flops_under(by_module, names[id(m)]) for m in modules)
    return flops


def _flops_under(by_module: dict[str, int], prefix: str) -> int:
    """FLOPs of a module, also when it was not called itself but through a method (the student's
    `backbone.forward_features`, the VAE's `encode`): then the sum over its outermost called descendants."""
    if prefix in by_module:
        return int(by_module[prefix])
    inside = [k for k in by_module if k.startswith(prefix + ".")]
    outermost = [k for k in inside if not any(k.startswith(other + ".") for other in inside)]
    return int(sum(by_module[k] for k in outermost))


def model_info(name_or_path: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Architecture, parameter counts (total, trainable, per part), input size, map shape, FLOPs per
    image and ablation switches of a named configuration or checkpoint, without loading weights.

    Args:
        name_or_path: a `models.MODELS` name, a shipped name, or a checkpoint folder/URL/Hub id.
        overrides: config fields to replace in a named configuration (e.g. `{"text_adapter": False}`).
    """
    info = models.describe(name_or_path, overrides)
    try:
        model = build_meta(name_or_path, overrides)
        flops = count_flops(model, tuple(info.preprocessing.size))
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        if not overrides:
            raise
        # what only building the model tells (an unknown backbone, an input too small for its layers)
        changed = ", ".join(f"{k}={json_text(v)}" for k, v in overrides.items())
        raise UsageError(f"{name_or_path} with --set {changed} cannot be built: {str(exc).splitlines()[0]}") from None
    parameters = checkpoint.parameter_counts(model)
    parameters["frozen"] = parameters["total"] - parameters["trainable"]
    for part, modules in model.parts().items():
        parameters[part] = sum(p.numel() for m in modules for p in m.parameters())
    size = tuple(info.preprocessing.size)
    result: dict[str, Any] = {
        "name": name_or_path,
        "architecture": info.architecture,
        "checkpoint_hash": info.checkpoint_hash,
        "is_checkpoint": name_or_path not in models.MODELS,
        "input_size": list(size),
        "preprocessing": info.preprocessing.to_dict(),
        "map_shape": list(info.map_shape),
        "parameters": parameters,
        "buffers": sum(b.numel() for b in model.buffers()),
        "flops": flops,
        "flops_note": FLOP_NOTE,
    }
    if overrides:
        result["overrides"] = dict(overrides)
    switches = getattr(model.config, "switches", None)
    if switches is not None:
        result["switches"] = switches()
        result["ablation"] = model.config.changed_switches()
    prepare = getattr(model, "prepare_for_inference", None)
    if prepare is not None:
        prepare()
        result["flops_inference"] = count_flops(model, size)
    return result
