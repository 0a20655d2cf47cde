"""Optimizer and schedule state in a checkpoint without pickle: tensors in safetensors, the rest JSON.

`torch.save` of an optimizer's `state_dict()` pickles it; our checkpoints never contain pickle, so the
state dict is split here: every tensor goes into `training_state.safetensors` under a path-like key,
everything else (param groups, step counters, the schedule, the epoch) into `training_state.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

TENSORS = "training_state.safetensors"
META = "training_state.json"


def _split(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested dict/list by `{"__tensor__": key}`, collecting it in `tensors`."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__keys__": [[_key(k), _split(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_split(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def _key(k: Any) -> Any:
    # optimizer state is keyed by int parameter ids; JSON object keys would turn them into strings
    return {"int": k} if isinstance(k, int) else k


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__keys__" in obj:
        return {(k["int"] if isinstance(k, dict) else k): _join(v, tensors) for k, v in obj["__keys__"]}
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


def save_state(directory: str | Path, **parts: Any) -> None:
    """Write named state dicts (`optimizer=opt.state_dict()`, `scheduler=...`, `epoch=3`, ...)."""
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    meta = {name: _split(value, name, tensors) for name, value in parts.items()}
    safetensors.torch.save_file(tensors, str(directory / TENSORS))
    (directory / META).write_text(json.dumps(meta, indent=1))


def load_state(directory: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The parts `save_state` wrote, tensors on `device`."""
    directory = Path(directory)
    tensors = safetensors.torch.load_file(str(directory / TENSORS), device=str(device))
    meta = json.loads((directory / META).read_text())
    return {name: _join(value, tensors) for name, value in meta.items()}
