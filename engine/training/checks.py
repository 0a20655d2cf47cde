"""What a training job decides and checks on the driver before Ray starts: executor, GPUs, inputs."""

from __future__ import annotations

import logging

from dpiqa.engine.splits import make_splits
from dpiqa.engine.training.config import TrainConfig
from dpiqa.engine.training.model import check_sources, model_config
from dpiqa.errors import UsageError

log = logging.getLogger(__name__)


def runs_locally(config: TrainConfig, address: str | None) -> bool:
    """Whether the loop runs in this process (`TrainRun.executor`); the choice is logged with its reason."""
    from dpiqa.engine.executor import named_cluster

    kind = config.run.executor  # a known one, and `local` with one worker (`TrainRun.__post_init__`)
    named = named_cluster(address)
    local = kind == "local" or (kind == "auto" and config.run.workers == 1 and not named)
    if kind == "auto":
        log.info(
            "%s: %s",
            config.job,
            "the training loop in this process (one worker, no cluster named; --executor ray for Ray Train's workers)"
            if local
            else f"the training loop on {config.run.workers} Ray Train worker(s)",
        )
    return local


def check_gpus(config: TrainConfig, local: bool, address: str | None) -> None:
    """`--device cuda` where this machine has no GPU for each worker stops here, in one line: in this process torch would
    fail at the first tensor moved, and Ray Train would wait for GPUs a local Ray never gets. A named cluster is
    not checked: its autoscaler may add GPU nodes on demand."""
    from dpiqa.engine.executor import named_cluster

    if not config.run.use_gpu or (not local and named_cluster(address)):
        return
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    need = 1 if local else config.run.workers
    if have < need:
        raise UsageError(
            f"--device cuda: {need} GPU(s) needed (one per worker) and this machine has {have} that torch can use; "
            "--device cpu trains on the CPU, or name a cluster with GPUs (--address)"
        )


def check_before_start(config: TrainConfig, labeled) -> str | None:
    """The checks of `run_training` that need no Ray; returns what the card records about the model's
    pretrained source."""
    from dpiqa import models

    # What the options alone can tell (the global batch against the workers, something to train on, the weights'
    # dtype, a teacher for a student) was refused when the config was made (`TrainConfig.__post_init__`).
    if labeled is not None:
        # every split, as `_train_split` will make it: `--grouped` on a set without groups, or a part left empty,
        # stops here, before Ray starts (the splits are a hash per image: milliseconds)
        make_splits(labeled.names, config.split, labeled.groups)
    if config.teacher and config.distill_mode != "none":
        for seed in config.split.seeds:
            models.describe(config.teacher_for(seed))  # a missing or damaged teacher is named now
    _, mos_scale = preprocessing_and_scale(config, labeled)
    return check_sources(config.model, mos_scale, config.storage_options)


def load_labeled(config: TrainConfig):
    from dpiqa.engine.datasets import LabeledSet, load_dataset

    if config.dataset is None:
        return None
    labeled = load_dataset(
        config.dataset, config.root, storage_options=config.storage_options, **config.dataset_options
    )
    if not isinstance(labeled, LabeledSet):
        raise ValueError(f"--dataset {config.dataset} streams shards; pass them with --input instead")
    return labeled


def preprocessing_and_scale(config: TrainConfig, labeled) -> tuple:
    """The model's preprocessing and the MOS scale it will be trained in, decided on the driver without
    building the model (the workers build it)."""
    from dpiqa import models

    spec = config.model
    if labeled is not None:
        mos_scale = labeled.mos_scale
    elif config.teacher_outputs:
        mos_scale = _teacher_scale(config)
    else:
        mos_scale = config.shard_mos_scale or 100.0
    if spec.init:
        pre = models.describe(spec.init).preprocessing
    else:
        pre = model_config(spec, mos_scale).preprocessing
    return pre, mos_scale


def _teacher_scale(config: TrainConfig) -> float:
    from dpiqa.engine.output import OutputLocation

    run = OutputLocation(config.teacher_outputs, config.storage_options).read_json("_run.json") or {}
    return float(run.get("identity", {}).get("mos_scale", 100.0))


def use_gpu(config: TrainConfig) -> bool:
    import ray

    if config.run.use_gpu is not None:
        return config.run.use_gpu
    return ray.cluster_resources().get("GPU", 0) >= config.run.workers
