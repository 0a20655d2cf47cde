"""One split's training and validation data on Ray Data, materialised once (teacher outputs, backbone features)."""

from __future__ import annotations

import logging
import time

import numpy as np

from dpiqa.engine.training.checks import use_gpu
from dpiqa.engine.training.config import TrainConfig
from dpiqa.engine.training.model import model_config

log = logging.getLogger(__name__)


def materialize(ds, what: str):  # a Ray dataset
    """`ds.materialize()`, logged by this process with its size and rate: the actors' own progress lines reach
    the driver only through Ray's log forwarding (asynchronous, and off where a cluster sets `log_to_driver`)."""
    start = time.monotonic()
    ds = ds.materialize()
    seconds = time.monotonic() - start
    rows = ds.count()
    log.info("%s: %d images in %.1fs (%.1f images/s)", what, rows, seconds, rows / max(seconds, 1e-9))
    return ds


def split_datasets(config: TrainConfig, labeled, split, preprocessing, mos_scale: float):
    """The training data of one split: `dpiqa.engine.training.data.EpochBatches` of the materialised labelled set
    (shuffled whole every epoch, the same global batches at any number of workers), or, when shards stream,
    a Ray dataset (the labelled set, if any, joined to the stream); the validation dataset; whether rows carry
    cached backbone features; and the training images per epoch (None when shards stream)."""
    from dpiqa.engine.datasets import load_dataset
    from dpiqa.engine.training import data

    cache = _caches_features(config, mos_scale)
    # the model's input: cached features, or the pixels (and the statistics measured before the resize)
    pixels = ["features"] if cache else ["image", *(["statistics"] if preprocessing.statistics else [])]
    ranked = config.ranked
    extra = data.rank_table_rows(config.extra_train, mos_scale, config.storage_options) if config.extra_train else []
    images = len(split.train) * (1 + config.synthetic) + len(extra)

    def cached(ds, total: int | None = None):
        if not cache:
            return ds
        return data.with_backbone_features(
            ds,
            config.model,
            mos_scale,
            threads=config.run.threads,
            total=total,
            storage_options=config.storage_options,
            cache_dir=config.run.cache_dir,
            seed=split.seed,
        )

    rank_columns = list(data.RANK_COLUMNS) if ranked else []
    columns = (
        [*pixels, "target"]
        + (["teacher_score", "teacher_map"] if config.model.kind == "student" else [])
        + rank_columns
    )
    parts = []
    val, count = None, 0
    if labeled is not None:
        train = data.labeled_dataset(
            labeled,
            split.train,
            preprocessing,
            config.storage_options,
            synthetic=config.synthetic,
            ranked=True if ranked else None,
        )
        if extra:
            train = train.union(data.rows_dataset(extra, preprocessing, config.storage_options))
        if config.model.kind == "student":
            if config.teacher is None or config.distill_mode == "none":
                train = train.map_batches(_no_teacher, batch_format="numpy")
            else:
                gpus = 1.0 if use_gpu(config) else 0.0
                train = data.with_teacher(
                    train,
                    config.teacher_for(split.seed),
                    preprocessing,
                    device="cuda" if gpus else "cpu",
                    num_gpus=gpus,
                    threads=config.run.threads,
                    total=images,
                    cache_dir=config.run.cache_dir,
                )
                if cache:
                    # The teacher's actor and the backbone-feature actor each hold a CPU for as long as the
                    # stream runs: on a 2-CPU node none is left to decode images and both wait for ever.
                    # The teacher's outputs are materialised first, which ends its actor.
                    train = materialize(train, f"{config.job}: the teacher's outputs")
        # Materialised once (decoding, teacher outputs, cached features), then served in another seeded
        # permutation every epoch.
        what = "the training set's backbone features" if cache else "the training set"
        train = materialize(cached(train, images).select_columns(columns), f"{config.job}: {what}")
        count = train.count()
        parts.append(train)
        vals = []
        if len(split.val):
            vals.append(
                data.labeled_dataset(
                    labeled, split.val, preprocessing, config.storage_options, ranked=False if ranked else None
                )
            )
        if config.extra_val:
            vals.append(
                data.rows_dataset(
                    data.rank_table_rows(config.extra_val, mos_scale, config.storage_options),
                    preprocessing,
                    config.storage_options,
                )
            )
        if vals:
            val = vals[0].union(*vals[1:]) if len(vals) > 1 else vals[0]
            what = "the validation set's backbone features" if cache else "the validation set"
            val = materialize(cached(val).select_columns([*pixels, "target", *rank_columns]), f"{config.job}: {what}")
    if config.shards:
        shards = load_dataset(
            "webdataset",
            config.shards,
            score_field=config.score_field,
            mos_scale=config.shard_mos_scale or 100.0,
            require_score=config.teacher_outputs is None,
            storage_options=config.storage_options,
        )
        teacher = (
            data.TeacherOutputs(config.teacher_outputs, config.storage_options) if config.teacher_outputs else None
        )
        # Shards stream (too many to shuffle whole): their order is reshuffled every epoch, and the loop's
        # local buffer mixes samples of several shards.
        stream = data.shard_dataset(shards, teacher, preprocessing, seed=split.seed)
        if config.model.kind == "teacher":
            stream = stream.filter(lambda row: np.isfinite(row["target"]))
        parts.append(cached(stream).select_columns(columns))
    if not parts:
        raise ValueError("nothing to train on: give --dataset/--root and/or --input")
    if not config.shards:
        return (
            data.EpochBatches(parts[0], columns, group_column="rank_group" if config.rank_weight else None),
            val,
            cache,
            count,
        )
    train = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    return train, val, cache, None


def _caches_features(config: TrainConfig, mos_scale: float) -> bool:
    """A student whose backbone is frozen trains on its backbone's features, computed once per image
    (there is no augmentation that would change them from epoch to epoch)."""
    if not config.cache_features or config.model.kind != "student":
        return False
    if config.model.init:
        # Fine-tuning a checkpoint: its own config says whether its backbone is frozen (the features are
        # computed by the checkpoint's backbone, `build_model` loads it for the feature actor as for the loop).
        from dpiqa import models

        return bool(getattr(models.load_model(config.model.init).config, "freeze_backbone", False))
    return bool(getattr(model_config(config.model, mos_scale), "freeze_backbone", False))


def _no_teacher(batch: dict) -> dict:
    n = len(batch["target"])
    maps = np.empty(n, dtype=object)
    return {**batch, "teacher_score": np.full(n, np.nan, np.float32), "teacher_map": maps}
