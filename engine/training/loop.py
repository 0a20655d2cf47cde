"""The per-worker training loop (Ray Train `TorchTrainer`): teacher training or student distillation.

Runs on every worker: builds the model, resumes from Ray Train's latest checkpoint when there is one,
wraps it in DDP, and per epoch trains on its shard of the data, validates on rank 0 and reports
metrics with a checkpoint (our model format plus the optimizer state, no pickle).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

MODEL_DIR = "model"


@dataclass
class ModelSpec:
    """Which model to train and how to initialise it.

    Args:
        kind: `teacher` or `student`.
        config: a named configuration (`dpiqa-teacher`, `dpiqa-student-tiny`, ...) to start from.
        init: a checkpoint (folder, URL, Hub id) to start from instead (fine-tuning).
        sd: teacher only: Stable Diffusion weights (Hub id or diffusers folder/URL) for the VAE and U-Net.
        clip: teacher only: the CLIP text model that embeds the prompts (with `sd`).
        prompt_set: teacher only: the prompt set's name (with `sd`).
        backbone: student only: a timm backbone replacing the config's (a speed tier).
        image_size: override the input size.
        pretrained_backbone: student only: start from ImageNet weights where they can be downloaded.
        overrides: other config fields to set (e.g. ablation switches).
    """

    kind: str
    config: str | None = None
    init: str | None = None
    sd: str | None = None
    clip: str | None = None
    prompt_set: str | None = None
    backbone: str | None = None
    image_size: int | None = None
    pretrained_backbone: bool = True
    overrides: dict = field(default_factory=dict)


@dataclass
class LoopConfig:
    """Everything the workers need (plain data: it travels to every worker).

    Args:
        model: what to build.
        mos_scale: the labels' MOS scale, written into the model config (scores come out in those units).
        epochs, batch_size, lr, milestones, gamma: the protocol (Adam, step decay x gamma at milestones).
        precision: `auto` (bf16 autocast on GPU, fp32 on CPU), `fp32`, `bf16`, `fp16` (with a grad scaler).
        distill_mode: student only: `feature`, `score`, `both` or `none` (see `models.distill`).
        seed: seeds initialisation and the per-epoch data order.
        threads: torch threads per worker on CPU.
        shuffle_buffer: rows shuffled locally per epoch.
        has_val: a `val` dataset was given.
        cached_features: the rows hold a frozen backbone's `features` instead of `image`.
    """

    model: ModelSpec
    mos_scale: float
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-5
    milestones: tuple[int, ...] = (5,)
    gamma: float = 0.2
    precision: str = "auto"
    distill_mode: str = "feature"
    seed: int = 0
    threads: int | None = None
    shuffle_buffer: int = 4096
    has_val: bool = True
    cached_features: bool = False


def model_config(spec: ModelSpec, mos_scale: float) -> object:
    """The config of the model to train: the named config with the spec's sizes, switches and MOS scale."""
    import models

    name = spec.config or ("dpiqa-teacher" if spec.kind == "teacher" else "dpiqa-student")
    overrides = {**spec.overrides, "mos_scale": mos_scale}
    if spec.image_size:
        overrides["image_size"] = spec.image_size
    if spec.backbone:
        overrides["backbone"] = spec.backbone
    if spec.prompt_set:
        overrides["prompt_set"] = spec.prompt_set
    return models.named_config(name, overrides)


def build_model(spec: ModelSpec, mos_scale: float) -> torch.nn.Module:
    """The model to train, from a named config, SD weights or a checkpoint, with the labels' MOS scale."""
    import models

    if spec.init:
        model = models.load_model(spec.init)
        if not math.isclose(model.config.mos_scale, mos_scale):
            model.config = dataclasses.replace(model.config, mos_scale=mos_scale)
        return model
    config = model_config(spec, mos_scale)
    if spec.kind == "teacher" and spec.sd:
        from models.teacher import DPIQATeacher

        return DPIQATeacher.from_stable_diffusion(sd=spec.sd, clip=spec.clip or "openai/clip-vit-large-patch14",
                                                  config=config)
    cls = models.model_class(config_architecture(spec))
    if spec.kind == "student":
        return cls(config, pretrained_backbone=spec.pretrained_backbone)
    return cls(config)


def config_architecture(spec: ModelSpec) -> str:
    import models

    return models.MODELS[spec.config or ("dpiqa-teacher" if spec.kind == "teacher" else "dpiqa-student")][0]


def _autocast(precision: str, device: torch.device):
    import contextlib

    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return (torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()), precision


def train_loop_per_worker(cfg: LoopConfig) -> None:
    """The Ray Train worker function."""
    import ray.train
    import ray.train.torch

    from engine.metrics import compute_metrics
    from engine.training.data import to_torch
    from engine.training.state import load_state, save_state
    from models.distill import distillation_loss, teacher_loss

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.mos_scale)
    start_epoch, best = 0, None
    checkpoint = ray.train.get_checkpoint()
    state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            model.load_state_dict(type(model).from_pretrained(str(Path(d) / MODEL_DIR), verify=False).state_dict())
            state = load_state(d)
        start_epoch, best = int(state["epoch"]) + 1, state.get("best")
        log.info("rank %d: resuming after epoch %d", rank, start_epoch - 1)
    config, preprocessing, map_shape = model.config, model.config.preprocessing, tuple(model.config.map_shape)
    device = ray.train.torch.get_device()
    ddp = ray.train.torch.prepare_model(model)
    module = ddp.module if hasattr(ddp, "module") else ddp
    optimizer = torch.optim.Adam([p for p in ddp.parameters() if p.requires_grad], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    autocast, precision = _autocast(cfg.precision, device)
    scaler = torch.amp.GradScaler(enabled=precision == "fp16" and device.type == "cuda")

    train = ray.train.get_dataset_shard("train")
    val = ray.train.get_dataset_shard("val") if rank == 0 and cfg.has_val else None
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.monotonic()
        torch.manual_seed(cfg.seed * 1000 + epoch)
        ddp.train()
        losses, seen = [], 0
        for batch in train.iter_batches(batch_size=cfg.batch_size, batch_format="numpy",
                                        local_shuffle_buffer_size=cfg.shuffle_buffer,
                                        local_shuffle_seed=cfg.seed * 1000 + epoch):
            b = to_torch(batch, map_shape if cfg.model.kind == "student" else None)
            target = b["target"].to(device)
            with autocast:
                if cfg.cached_features:
                    score, quality_map = ddp(b["features"].to(device), from_backbone=True)
                else:
                    score, quality_map = ddp(preprocessing.to_tensor(b["image"].to(device)))
            score, quality_map = score.float(), quality_map.float()
            if cfg.model.kind == "teacher":
                loss = teacher_loss(score, target)
            else:
                teacher_score = b["teacher_score"].to(device) / config.mos_scale if "teacher_score" in b else None
                loss = distillation_loss(score, quality_map, target, teacher_score,
                                         b["teacher_map"].to(device) if "teacher_map" in b else None,
                                         mode=cfg.distill_mode).total
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            seen += len(target)
        scheduler.step()
        metrics = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else math.nan,
                   "lr": optimizer.param_groups[0]["lr"], "images": seen,
                   "seconds": round(time.monotonic() - t0, 2)}
        if rank == 0:
            metrics.update(_validate(module, val, preprocessing, device, autocast, config.mos_scale, compute_metrics,
                                     cfg.cached_features))
            score_key = metrics.get("val_srcc", -metrics["train_loss"])
            if not math.isfinite(score_key):  # constant predictions (an untrained model) have no SRCC
                score_key = -math.inf
            if best is None or score_key > best["score"]:
                best = {"epoch": epoch, "score": score_key}
            metrics["best_epoch"] = best["epoch"]
            log.info("epoch %d/%d: train loss %.5f, val SRCC %s PLCC %s, %d images in %.1fs", epoch + 1, cfg.epochs,
                     metrics["train_loss"], _fmt(metrics.get("val_srcc")), _fmt(metrics.get("val_plcc")), seen,
                     metrics["seconds"])
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                module.save_pretrained(str(Path(d) / MODEL_DIR))
                save_state(d, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), epoch=epoch,
                           best=best)
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=ckpt)


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


@torch.no_grad()
def _validate(model, val, preprocessing, device, autocast, mos_scale, compute_metrics,  # noqa: ANN001
              cached_features: bool = False) -> dict:
    if val is None:
        return {}
    model.eval()
    preds, mos = [], []
    for batch in val.iter_batches(batch_size=64, batch_format="numpy"):
        with autocast:
            if cached_features:
                score, _ = model(torch.as_tensor(np.ascontiguousarray(batch["features"])).to(device), from_backbone=True)
            else:
                score, _ = model(preprocessing.to_tensor(torch.as_tensor(np.ascontiguousarray(batch["image"])).to(device)))
        preds.append(score.float().cpu().numpy() * mos_scale)
        mos.append(batch["target"].astype(np.float64) * mos_scale)
    model.train()
    if not preds:
        return {}
    pred, truth = np.concatenate(preds), np.concatenate(mos)
    keep = np.isfinite(truth)
    if keep.sum() < 3:
        return {}
    m = compute_metrics(pred[keep], truth[keep])
    return {"val_srcc": m["srcc"], "val_plcc": m["plcc"], "val_krcc": m["krcc"], "val_rmse": m["rmse"]}
