"""`describe`: what the driver needs to know about a model (`ModelInfo`: identity, preprocessing, output
shape, card) from its config and card alone, without torch or its weights."""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from typing import Any

from dpiqa.errors import UsageError
from dpiqa.models import checkpoint
from dpiqa.models.preprocessing import Preprocessing
from dpiqa.models.registry import BASELINES, CONFIGS, MODELS, RANDOM_SEED, named_config, resolve


@dataclass(frozen=True)
class ModelInfo:
    """What the driver needs to know about a model without loading its weights.

    `checkpoint_hash` of an ONNX export is its own (over `config.json` + `model.onnx`), so its scores never
    resume into a torch run's output; the card's `source.checkpoint_hash` names the checkpoint it came from.
    `runtime` (`torch` or `onnx`) is not part of the identity: the hash already tells the two apart.
    """

    name: str
    architecture: str
    checkpoint_hash: str
    preprocessing: Preprocessing
    mos_scale: float
    map_shape: tuple[int, ...]
    card: dict
    runtime: str = "torch"

    def identity(self) -> dict:
        return {
            "model": self.name,
            "architecture": self.architecture,
            "checkpoint_hash": self.checkpoint_hash,
            "preprocessing": self.preprocessing.to_dict(),
            "mos_scale": self.mos_scale,
        }


def describe(name_or_path: str, overrides: dict[str, Any] | None = None) -> ModelInfo:
    """Read a model's identity from its config and card only (works on the driver for any size).

    Args:
        name_or_path: a `MODELS` name, a shipped name, or a checkpoint folder/URL/Hub id.
        overrides: config fields to replace; named configurations only (a checkpoint's config is its own).
    """
    if name_or_path in BASELINES:
        b = BASELINES[name_or_path]
        return ModelInfo(
            name_or_path,
            name_or_path,
            b.identity,
            Preprocessing(size=b.size),
            100.0,
            b.map_shape,
            {"architecture": name_or_path, "note": b.note},
            "baseline",
        )
    if overrides and name_or_path not in MODELS:
        raise UsageError(
            f"{name_or_path}: config overrides apply to named configurations ({', '.join(MODELS)}), not to checkpoints"
        )
    if name_or_path in MODELS:
        architecture = MODELS[name_or_path][0]
        config = named_config(name_or_path, overrides)
        digest = hashlib.sha256(json.dumps(checkpoint.config_to_dict(config), sort_keys=True).encode()).hexdigest()
        return ModelInfo(
            name_or_path,
            architecture,
            f"random:seed{RANDOM_SEED}:{digest[:16]}",
            config.preprocessing,
            float(config.mos_scale),
            tuple(config.map_shape),
            {},
        )
    location = resolve(name_or_path)
    data = checkpoint.read_json(location, checkpoint.CONFIG_NAME)
    if data is None:
        raise FileNotFoundError(f"{name_or_path}: no config.json (not a DP-IQA checkpoint, named model or Hub id)")
    card = checkpoint.read_json(location, checkpoint.CARD_NAME) or {}
    if data.get("architecture") not in CONFIGS:
        raise ValueError(
            f"{name_or_path}: unknown architecture {data.get('architecture')!r}; known: {', '.join(CONFIGS)}"
        )
    module, name = CONFIGS[data["architecture"]].split(":")
    config = checkpoint.config_from_dict(getattr(importlib.import_module(module), name), data)
    runtime = "onnx" if card.get("format") == "onnx" else "torch"
    if runtime == "torch":
        checkpoint.check_weights(location)
    digest = card.get("sha256")
    if not digest:
        files = checkpoint.ONNX_FILES if runtime == "onnx" else checkpoint.FILES
        digest = checkpoint.content_hash(checkpoint.local_dir(location, files), files[:2])
    return ModelInfo(
        name_or_path,
        data["architecture"],
        digest,
        config.preprocessing,
        float(config.mos_scale),
        tuple(config.map_shape),
        card,
        runtime,
    )
