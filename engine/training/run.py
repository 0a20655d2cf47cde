"""A training job: seeded splits, data on Ray Data, a Ray Train `TorchTrainer` per split, the best
checkpoint by validation exported in our format with a card holding the protocol and test metrics.

The job's parts: `config` (what is trained and how it runs), `checks` (what the driver decides and checks
before Ray starts), `split_data` (one split's data), `trainer` (Ray Train), `card` (what the card records).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from dpiqa import storage
from dpiqa.engine.splits import Split, make_split
from dpiqa.engine.training.card import trained_before, training_record
from dpiqa.engine.training.checks import (
    check_before_start,
    check_gpus,
    load_labeled,
    preprocessing_and_scale,
    runs_locally,
    use_gpu,
)
from dpiqa.engine.training.config import DEFAULTS, MILESTONES, TrainConfig, TrainResult, TrainRun
from dpiqa.engine.training.loop import MODEL_DIR, LoopConfig
from dpiqa.engine.training.split_data import split_datasets
from dpiqa.engine.training.trainer import fit
from dpiqa.models.run_options import RunOptions
from dpiqa.storage import get_fs, join

__all__ = ["DEFAULTS", "MILESTONES", "TrainConfig", "TrainResult", "TrainRun", "run_training"]

log = logging.getLogger(__name__)


def run_training(config: TrainConfig, address: str | None = None) -> TrainResult:
    """Train (or distill) one model per split and report the median test metrics.

    Everything the job is given is checked before Ray starts: the dataset's layout, the global batch
    against the workers, the teacher checkpoint, and the weights the model is built from.

    Raises:
        ValueError: one line naming what is wrong or missing and how to proceed.
    """
    from dpiqa.engine.executor.ray_data import configure_data_context, init_ray
    from dpiqa.engine.metrics import summarize

    labeled = load_labeled(config)
    sources = check_before_start(config, labeled)
    local = runs_locally(config, address)
    check_gpus(config, local, address)
    init_ray(address, for_training=True)
    ctx = configure_data_context()  # epoch lines come from the loop
    # The training sets are materialised through actor pools (teacher outputs, cached backbone features),
    # which otherwise return blocks in completion order: keep the split's order, so that a run's batches do
    # not depend on scheduling (and a frozen backbone trains on its cached features as on its images).
    ctx.execution_options.preserve_order = True
    results = []
    for seed in config.split.seeds:
        out = config.output if config.split.n_splits == 1 else join(config.output, f"split-{seed}")
        results.append(_train_split(config, labeled, seed, out, sources, local))
    tests = [r["metrics"]["test"] for r in results if r["metrics"].get("test")]
    summary = {
        "job": config.job,
        "identity": config.identity(),
        "protocol": config.protocol_name,
        "selection": config.protocol()["selection"],
        "splits": [
            {"seed": r["seed"], "output": r["output"], "test": r["metrics"].get("test"), "best_epoch": r["best_epoch"]}
            for r in results
        ],
        "median": summarize(tests) if tests else None,
    }
    if config.split.n_splits > 1:
        fs, path = get_fs(config.output, config.storage_options)
        with fs.open(storage.fs_join(path, "summary.json"), "wt") as f:
            json.dump(summary, f, indent=2, sort_keys=True)
    return TrainResult(results, summary)


def _train_split(
    config: TrainConfig,
    labeled,
    seed: int,
    out: str,
    sources: str | None,
    local: bool = False,
) -> dict:
    from dpiqa import models
    from dpiqa.engine.evaluate import evaluate
    from dpiqa.models import checkpoint

    done = trained_before(config, seed, out)
    if done is not None:
        log.info("%s: split %d already trained at %s; skipping", config.job, seed, out)
        return done

    split = (
        make_split(labeled.names, seed, config.split.fractions, groups=labeled.groups, grouped=config.split.grouped)
        if labeled is not None
        else Split(seed, np.zeros(0, int), np.zeros(0, int), np.zeros(0, int))
    )
    preprocessing, mos_scale = preprocessing_and_scale(config, labeled)
    protocol = config.protocol()
    train, val, cached_features, images_per_epoch = split_datasets(config, labeled, split, preprocessing, mos_scale)
    gpu = use_gpu(config)
    loop = LoopConfig(
        job=config,
        mos_scale=mos_scale,
        seed=seed,
        has_val=val is not None,
        cached_features=cached_features,
        images_per_epoch=images_per_epoch,
    )
    fitted = fit(loop, train, val, f"{config.job}-{config.identity()}-split{seed}", local, gpu)
    best_metrics = fitted.best_metrics
    with fitted.checkpoint.as_directory() as d:
        model = checkpoint.round_weights(models.load_model(str(Path(d) / MODEL_DIR)), config.weights_dtype)
    metrics = {"val": {k[4:]: v for k, v in best_metrics.items() if k.startswith("val_")}}
    if labeled is not None and len(split.test):
        scorer = models.Scorer(model, RunOptions(device="cuda" if gpu else "cpu", precision=config.precision))
        metrics["test"] = evaluate(scorer, labeled, split.test, storage_options=config.storage_options)
        log.info(
            "%s split %d: test SRCC %.4f PLCC %.4f (best epoch %s)",
            config.job,
            seed,
            metrics["test"]["srcc"],
            metrics["test"]["plcc"],
            best_metrics.get("epoch"),
        )
    training = training_record(config, split, protocol, fitted.final, best_metrics, local, sources, fitted.seconds)
    model.save_pretrained(out, card={"training": training, "metrics": metrics}, weights_dtype=config.weights_dtype)
    return {"seed": seed, "output": out, "metrics": metrics, "best_epoch": best_metrics.get("epoch")}
