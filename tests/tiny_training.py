"""Tiny training commands the tests share: a tiny student or teacher from random initialisation on a labelled CSV table."""

from __future__ import annotations

from pathlib import Path

import torch

from dpiqa import models
from dpiqa.engine.splits import SplitConfig
from dpiqa.engine.training.model import ModelSpec
from dpiqa.engine.training.run import TrainConfig, TrainRun


def tiny_teacher(table: Path) -> list[str]:
    """`dpiqa train-teacher` of `dpiqa-teacher-tiny` on a random prior over a labelled CSV table, global batch 8,
    one thread (the command line; a test adds epochs, a protocol, an output)."""
    return [
        "train-teacher",
        "--dataset",
        "csv",
        "--batch-size",
        "8",
        "--threads",
        "1",
        "--root",
        str(table),
        "--config",
        "dpiqa-teacher-tiny",
        "--random-prior",
    ]


def tiny_student(
    table: Path, out: Path, *, epochs: int, overrides: dict | None = None, run: TrainRun | None = None, **fields
) -> TrainConfig:
    """`distill --mode none` (labels only) of `dpiqa-student-tiny` without pretrained weights, one split, global
    batch 8, one thread; `fields` are further TrainConfig fields (lr, ranking tables, ...)."""
    return TrainConfig(
        job="distill",
        output=str(out),
        dataset="csv",
        root=str(table),
        distill_mode="none",
        model=ModelSpec(
            kind="student", config="dpiqa-student-tiny", pretrained_backbone=False, overrides=overrides or {}
        ),
        split=SplitConfig(n_splits=1),
        epochs=epochs,
        batch_size=8,
        run=run or TrainRun(threads=1),
        **fields,
    )


def weights(path: Path) -> dict[str, torch.Tensor]:
    """A saved model's state dict."""
    return models.load_model(str(path)).state_dict()
