"""What a trained checkpoint's card records about its training, and whether a split was already trained."""

from __future__ import annotations

import hashlib

from dpiqa import storage
from dpiqa.engine.splits import Split
from dpiqa.engine.training.config import TrainConfig
from dpiqa.storage import get_fs
from dpiqa.version import code_version, machine


def trained_before(config: TrainConfig, seed: int, out: str) -> dict | None:
    """The split's result (`seed`, `output`, `metrics`, `best_epoch`) when `out` already holds this run's
    checkpoint for it (same identity, seed and weights dtype), else None."""
    from dpiqa.models import checkpoint

    card = checkpoint.read_json(out, checkpoint.CARD_NAME) if _exists(out, config) else None
    if (
        card
        and card.get("training", {}).get("identity") == config.identity()
        and card.get("training", {}).get("seed") == seed
        and card.get("weights_dtype") == config.weights_dtype
    ):
        return {
            "seed": seed,
            "output": out,
            "metrics": card.get("metrics", {}),
            "best_epoch": card["training"].get("best_epoch"),
        }
    return None


def training_record(
    config: TrainConfig,
    split: Split,
    protocol: dict,
    final: dict,
    best_metrics: dict,
    local: bool,
    sources: str | None,
    seconds: float,
) -> dict:
    """The card's `training` section of one split.

    Args:
        config: the job.
        split: the split trained.
        protocol: `config.protocol()`.
        final: the latest epoch's metrics (`steps`, `history`, `resumed_at_epoch`).
        best_metrics: the metrics of the epoch kept.
        local: whether the loop ran in this process.
        sources: what `checks.check_before_start` found about the model's pretrained source.
        seconds: how long the training took.
    """
    seed = split.seed
    return {
        "job": config.job,
        "identity": config.identity(),
        "seed": seed,
        "command": config.command,
        "dataset": config.dataset,
        "root": config.root,
        "dataset_options": config.dataset_options,
        "split": {
            "fractions": list(config.split.fractions),
            "seed": seed,
            "grouped": config.split.grouped,
            "sizes": split.sizes(),
        },
        "shards": config.shards,
        "teacher_outputs": config.teacher_outputs,
        "synthetic": {"copies_per_image": config.synthetic, "label": "reference MOS x (1 - 0.15 x level)"}
        if config.synthetic
        else None,
        "teacher": _teacher_identity(config.teacher_for(seed)),
        "ranking": {
            "weight": config.rank_weight,
            "margin": config.rank_margin,
            "loss": "mean hinge max(0, margin - (s_better - s_worse)) over pairs of one source's levels",
            "batches": "whole groups",
        }
        if config.rank_weight
        else None,
        "extra_train": _table_identity(config.extra_train, config.storage_options),
        "extra_val": _table_identity(config.extra_val, config.storage_options),
        "protocol": {**protocol, "precision": best_metrics.get("precision", protocol["precision"])},
        "steps": final.get("steps"),
        "best_epoch": best_metrics.get("epoch"),
        # > 0 when the workers that finished had resumed from a checkpoint (a killed worker or a rerun)
        "resumed_at_epoch": final.get("resumed_at_epoch"),
        "images_per_epoch": best_metrics.get("images"),
        "history": final.get("history"),  # per epoch: train_loss, val_srcc
        "executor": "local" if local else "ray",
        ("prior" if config.model.kind == "teacher" else "pretrained_backbone"): sources,
        "seconds": round(seconds, 1),
        "machine": machine(),
        "code_version": code_version(),
    }


def _table_identity(table: str | None, storage_options: dict | None) -> dict | None:
    if table is None:
        return None
    fs, path = get_fs(table, storage_options)
    raw = fs.cat_file(path)
    return {"table": table, "rows": raw.count(b"\n") - 1, "sha256": hashlib.sha256(raw).hexdigest()}


def _teacher_identity(teacher: str | None) -> dict | None:
    if teacher is None:
        return None
    from dpiqa import models

    info = models.describe(teacher)
    return {"model": teacher, "checkpoint_hash": info.checkpoint_hash, "architecture": info.architecture}


def _exists(out: str, config: TrainConfig) -> bool:
    fs, path = get_fs(out, config.storage_options)
    return fs.exists(storage.fs_join(path, "card.json"))
