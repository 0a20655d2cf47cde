"""Ray Train's `TorchTrainer` for one split (in this process or on workers), and the best checkpoint it kept."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpiqa import storage
from dpiqa.engine.training.config import TrainConfig
from dpiqa.engine.training.local import LocalCheckpoints
from dpiqa.engine.training.loop import LoopConfig, train_loop_per_worker
from dpiqa.storage import get_fs, join


@dataclass
class Fitted:
    """What one split's training left: the checkpoint kept and its metrics, the latest epoch's metrics.

    Args:
        checkpoint: the kept `ray.train.Checkpoint` (best by validation, else the latest).
        best_metrics: its metrics (`epoch`, `val_*`, `precision`, `images`).
        final: the latest epoch's metrics (`steps`, `history`; `resumed_at_epoch` on a rerun).
        seconds: how long `fit` took.
    """

    checkpoint: object
    best_metrics: dict
    final: dict
    seconds: float


def fit(loop: LoopConfig, train, val, name: str, local: bool, use_gpu: bool) -> Fitted:
    """Train one split with Ray Train and pick the checkpoint to keep.

    Args:
        loop: what the workers run; its job (`loop.job`) says how (workers, failures, storage).
        train: the training data: `dpiqa.engine.training.data.EpochBatches`, or a Ray dataset of streamed shards.
        val: the validation Ray dataset, or None.
        name: the Ray Train run's name (resumes a run of the same name in the same storage).
        local: run the loop in this process (Ray Train's local mode) instead of on Ray Train's workers.
        use_gpu: one GPU per worker.

    Raises:
        RuntimeError: the training produced no checkpoint.
    """
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchTrainer

    from dpiqa.engine.training import data

    config = loop.job
    epoch_batches = train if isinstance(train, data.EpochBatches) else None
    datasets = {} if epoch_batches is not None else {"train": train}
    if val is not None:
        datasets["val"] = val
    # Ray Train's INFO lines on the console (resources requested, process group set up, each checkpoint and
    # report with all its metrics) repeat what the job logs once per epoch; they stay in the Ray session's log
    # files. Warnings and errors still show.
    logging_config = ray.train.LoggingConfig(log_level="WARNING")
    if local:
        checkpoints = LocalCheckpoints(
            url=join(config.storage or join(config.output, "_train"), name, "local"),
            storage_options=config.storage_options,
            keep=2,
            score="val_select" if val is not None else None,
        )
        loop = dataclasses.replace(loop, local=checkpoints, device="cuda" if use_gpu else "cpu")
        for quiet in ("ray.train.v2.api.config", "ray.train.v2._internal.execution.train_fn_utils"):
            # "Running in local mode ..." and every report's metrics, at INFO
            logging.getLogger(quiet).setLevel(logging.WARNING)
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"loop": loop, "epoch_batches": epoch_batches},
            scaling_config=ray.train.ScalingConfig(num_workers=0),
            run_config=ray.train.RunConfig(name=name, logging_config=logging_config),
            datasets=datasets,
        )
    else:
        storage_path, storage_fs = _storage(config)
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"loop": loop, "epoch_batches": epoch_batches},
            scaling_config=ray.train.ScalingConfig(
                num_workers=config.run.workers,
                use_gpu=use_gpu,
                resources_per_worker={"CPU": config.run.cpus_per_worker},
            ),
            run_config=ray.train.RunConfig(
                name=name,
                logging_config=logging_config,
                storage_path=storage_path,
                storage_filesystem=storage_fs,
                failure_config=ray.train.FailureConfig(max_failures=config.run.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(
                    num_to_keep=2,
                    checkpoint_score_attribute="val_select" if val is not None else None,
                    checkpoint_score_order="max",
                ),
            ),
            datasets=datasets,
            dataset_config=ray.train.DataConfig(
                datasets_to_split=["train"] if "train" in datasets else [],
                execution_options=ExecutionOptions(preserve_order=True),
            ),
        )
    # a local rerun resumes after its latest checkpoint's epoch (-1: none); Ray Train's result tells it itself
    resumed_after = max((m["epoch"] for _, m in checkpoints.entries()), default=-1) if local else -1
    t0 = time.monotonic()
    result = trainer.fit()
    seconds = time.monotonic() - t0
    if local:
        kept = checkpoints.best()
        if not kept:
            raise RuntimeError(f"training produced no checkpoint in {checkpoints.url}")
        final = kept[-1][1]  # the latest epoch's metrics (a rerun that had nothing left to train reports none)
        best_ckpt, best_metrics = _best(kept, kept[-1], val is not None)
    else:
        if result.checkpoint is None:
            raise RuntimeError(f"training produced no checkpoint: {result.error}")
        final = result.metrics or {}
        if not final:  # a rerun that had nothing left to train reports no metrics: the latest checkpoint's stand
            final = max((m for _, m in result.best_checkpoints or []), key=lambda m: m["epoch"], default={})
            resumed_after = loop.epochs - 1
        best_ckpt, best_metrics = _best(result.best_checkpoints or [], (result.checkpoint, final), val is not None)
    if resumed_after >= loop.epochs - 1:
        # A rerun of a finished run (another --weights-dtype) trains nothing: its card keeps the run's history
        # and says so (resumed at the epoch after the last; `seconds` is this rerun's).
        final = {**final, "resumed_at_epoch": loop.epochs}
    return Fitted(best_ckpt, best_metrics, final, seconds)


def _storage(config: TrainConfig) -> tuple[str, object | None]:
    """Ray Train's storage path and, for object stores, a filesystem honouring our storage options
    (pyarrow's own S3 filesystem would ignore e.g. a custom endpoint)."""
    location = config.storage or join(config.output, "_train")
    if "://" not in location:
        Path(location).mkdir(parents=True, exist_ok=True)
        return str(Path(location).resolve()), None
    fs, path = get_fs(location, config.storage_options)
    return path, storage.arrow_filesystem(fs)


def _worker(config: dict) -> None:
    train_loop_per_worker(config["loop"], config.get("epoch_batches"))


def _best(kept: list, latest: tuple, has_val: bool) -> tuple:
    """Of the kept `(checkpoint, metrics)`, the one with the best validation selection score (the earlier epoch
    on a tie); `latest` when there is no validation or no finite score."""
    candidates = [(c, m) for c, m in kept if c is not None]
    if has_val:
        scored = [(c, m) for c, m in candidates if m.get("val_select") is not None and np.isfinite(m["val_select"])]
        if scored:
            return max(scored, key=lambda cm: (cm[1]["val_select"], -cm[1]["epoch"]))
    return latest
