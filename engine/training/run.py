"""A training job: seeded splits, data on Ray Data, a Ray Train `TorchTrainer` per split, the best
checkpoint by validation exported in our format with a card holding the protocol and test metrics."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dpiqa import storage
from dpiqa.engine.splits import SplitConfig, make_split
from dpiqa.engine.training.local import LocalCheckpoints
from dpiqa.engine.training.loop import MODEL_DIR, LoopConfig, train_loop_per_worker
from dpiqa.engine.training.model import ModelSpec, check_sources, model_config
from dpiqa.errors import UsageError
from dpiqa.models.run_options import RunOptions
from dpiqa.storage import get_fs, join
from dpiqa.version import code_version, machine

log = logging.getLogger(__name__)

# The paper's protocol: epoch(s) at which the learning rate is multiplied by 0.2, per dataset.
# AGIQA-3K is not in the paper; it gets KonIQ-10k's schedule.
MILESTONES = {
    "teacher": {"koniq": (5,), "spaq": (5,), "clive": (10,), "livefb": (2,), "agiqa3k": (5,)},
    "student": {"koniq": (5,), "clive": (10, 25), "livefb": (4,), "spaq": (6,), "agiqa3k": (5,)},
}
DEFAULTS = {
    "teacher": {"lr": 1e-5, "batch_size": 16, "epochs": 30},
    "student": {"lr": 1e-4, "batch_size": 24, "epochs": 30},
}


@dataclass(frozen=True)
class TrainRun:
    """How a training job runs, apart from what it trains (none of it enters the run's identity, so a rerun
    with other workers or threads resumes the same training).

    Args:
        workers: Ray Train workers (DDP); each takes `batch_size / workers` of the global batch.
        use_gpu: one GPU per worker; None: when the cluster has a GPU for every worker.
        cpus_per_worker: CPUs Ray reserves per worker.
        threads: torch threads per worker (None: torch's default).
        max_failures: worker failures Ray Train recovers from (restarting from the last checkpoint).
        cache_dir: a local folder keeping the teacher's outputs and a frozen backbone's features per image
            (`dpiqa.engine.training.data.OutputCache`), so that a rerun after a kill does not compute them again.
        executor: `ray` (Ray Train's worker actors), `local` (the loop in this process, Ray Train's local mode;
            one worker; `dpiqa.engine.training.local`), or `auto`: local for one worker when no cluster is named,
            else Ray Train. Either way the data is prepared on Ray Data and a rerun resumes from storage.
    """

    workers: int = 1
    use_gpu: bool | None = None
    cpus_per_worker: float = 1.0
    threads: int | None = None
    max_failures: int = 3
    cache_dir: str | None = None
    executor: str = "auto"


@dataclass
class TrainConfig:
    """A `train-teacher` or `distill` run: what is trained, and (`run`, a `TrainRun`) how it runs.

    Args:
        job: `train-teacher` or `distill`.
        output: where the trained checkpoint goes (folder or fsspec URL); with several splits,
            `OUTPUT/split-SEED/` each and `OUTPUT/summary.json`.
        model: the model to train (see `ModelSpec`).
        dataset: a labelled dataset's registry name (`agiqa3k`, `koniq`, `csv`, ...), or None.
        root: its root (folder, URL, table or shard specification).
        dataset_options: the layout's options.
        split: seeded train/val/test splits; one training run per split.
        protocol_name: `ours` (the epoch picked on the validation part) or `paper` (80/20, the last epoch).
        teacher: distill only: a teacher checkpoint whose outputs on the labelled images are computed
            once, before training. `{seed}` in it is replaced by the split's seed, so that each split
            distills from the teacher trained on that split (`OUT/split-{seed}`), never one that saw its
            test images.
        shards: distill at scale: WebDataset shards (labelled in `.json` where `score_field` is present,
            else unlabelled), streamed into training beside the labelled set.
        teacher_outputs: distill at scale: a `dpiqa score --write-maps` run of the teacher over `shards`.
        shard_mos_scale: the MOS scale of the shards' labels.
        cache_features: a student with a frozen backbone trains on the backbone's features computed once.
        synthetic: distorted copies of each training image added with pseudo-labels (graded blur, noise,
            JPEG, JPEG 2000, contrast, exposure; `dpiqa.engine.training.data.SyntheticDistortions`).
        epochs, lr, milestones: the protocol (defaults: the paper's for `job` and `dataset`).
        batch_size: the global batch (default the paper's); each of the `run.workers` takes its share.
        precision: `auto`, `fp32`, `bf16`, `fp16` (autocast on GPUs). distill_mode: the teacher terms.
        run: how it runs (`TrainRun`: workers, GPUs, threads, failures, the local cache).
        extra_train: a ranking table (`dpiqa.engine.training.data.rank_table_rows`: graded distortions of source
            images, labelled or not) added to the training part of every split, never to its validation or
            test part.
        extra_val: a ranking table added to the validation part: its mean per-source ranking SRCC joins the
            labelled validation SRCC in picking the epoch (`dpiqa.engine.training.loop.selection`).
        rank_weight, rank_margin: the pairwise ranking loss across levels of one source
            (`dpiqa.models.distill.ranking_loss`); with a weight, batches hold whole groups (`EpochBatches`).
        storage: Ray Train's run storage (checkpoints); default `OUTPUT/_train`. A rerun of the same
            command with the same storage resumes from the last checkpoint.
        storage_options: fsspec options for the dataset, outputs and storage.
        command: the command line, recorded in the card.
        weights_dtype: how the output checkpoint stores its floating-point weights
            (`dpiqa.models.checkpoint.WEIGHTS_DTYPES`; None: float32 as trained): the chosen epoch's weights
            are rounded to it before the test metrics are measured, so the card's metrics are the saved
            model's. Not part of the run's identity: a rerun with another dtype resaves the trained run.
    """

    job: str
    output: str
    model: ModelSpec
    dataset: str | None = None
    root: str | None = None
    dataset_options: dict = field(default_factory=dict)
    split: SplitConfig = field(default_factory=lambda: SplitConfig(n_splits=1))
    protocol_name: str = "ours"
    teacher: str | None = None
    shards: str | None = None
    teacher_outputs: str | None = None
    score_field: str = "mos"
    shard_mos_scale: float | None = None
    synthetic: int = 0
    cache_features: bool = True
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    milestones: tuple[int, ...] | None = None
    precision: str = "auto"
    distill_mode: str = "feature"
    run: TrainRun = field(default_factory=TrainRun)
    extra_train: str | None = None
    extra_val: str | None = None
    rank_weight: float = 0.0
    rank_margin: float = 0.05
    storage: str | None = None
    storage_options: dict | None = None
    command: list[str] = field(default_factory=list)
    weights_dtype: str | None = None

    @property
    def ranked(self) -> bool:
        """Rows carry the ranking columns (a ranking loss, or ranking tables to train or select on)."""
        return bool(self.rank_weight or self.extra_train or self.extra_val)

    def protocol(self) -> dict:
        kind = self.model.kind
        d = DEFAULTS[kind]
        batch = self.batch_size or d["batch_size"]
        return {
            "name": self.protocol_name,
            "selection": "last epoch"
            if self.split.fractions[1] == 0 and not self.extra_val
            else "best mean of validation SRCC and minus ranking SRCC"
            if self.extra_val
            else "best validation SRCC",
            "optimizer": "Adam",
            "lr": self.lr if self.lr is not None else d["lr"],
            "batch_size": batch,
            "batch_per_worker": batch // self.run.workers,
            "epochs": self.epochs or d["epochs"],
            "milestones": list(
                self.milestones if self.milestones is not None else MILESTONES[kind].get(self.dataset or "", (5,))
            ),
            "gamma": 0.2,
            "precision": self.precision,
            "distill_mode": self.distill_mode if kind == "student" else None,
            "workers": self.run.workers,
        }

    def identity(self) -> str:
        """A hash of what determines the trained model (not where it runs)."""
        keep = {
            k: v
            for k, v in asdict(self).items()
            if k
            not in (
                "output",
                "storage",
                "storage_options",
                "command",
                "run",
                "cache_features",
                "weights_dtype",
            )
        }
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    """Per split: where the checkpoint went and its metrics; and their summary over splits."""

    splits: list[dict]
    summary: dict


def run_training(config: TrainConfig, address: str | None = None) -> TrainResult:
    """Train (or distill) one model per split and report the median test metrics.

    Everything the job is given is checked before Ray starts: the dataset's layout, the global batch
    against the workers, the teacher checkpoint, and the weights the model is built from.

    Raises:
        ValueError: one line naming what is wrong or missing and how to proceed.
    """
    from dpiqa.engine.executor.ray_data import configure_data_context, init_ray
    from dpiqa.engine.metrics import summarize

    labeled = _load_labeled(config)
    sources = _check_before_start(config, labeled)
    local = _runs_locally(config, address)
    _check_gpus(config, local, address)
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


def _runs_locally(config: TrainConfig, address: str | None) -> bool:
    """Whether the loop runs in this process (`TrainRun.executor`); the choice is logged with its reason."""
    from dpiqa.engine.executor import EXECUTORS, named_cluster

    kind = config.run.executor
    if kind not in EXECUTORS:
        raise UsageError(f"--executor must be one of {', '.join(EXECUTORS)}, not {kind!r}")
    if kind == "local" and config.run.workers > 1:
        raise UsageError(
            f"--executor local runs one worker in this process; --workers {config.run.workers} needs --executor ray"
        )
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


def _check_gpus(config: TrainConfig, local: bool, address: str | None) -> None:
    """`--gpu` where this machine has no GPU for each worker stops here, in one line: in this process torch would
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
            f"--gpu: {need} GPU(s) needed (one per worker) and this machine has {have} that torch can use; "
            "drop --gpu to train on the CPU, or name a cluster with GPUs (--address)"
        )


def _check_before_start(config: TrainConfig, labeled) -> str | None:
    """The checks of `run_training` that need no Ray; returns what the card records about the model's
    pretrained source."""
    from dpiqa import models
    from dpiqa.models import checkpoint

    if config.protocol()["batch_size"] % config.run.workers:
        raise UsageError(
            f"--batch-size {config.protocol()['batch_size']} is the global batch and must divide "
            f"evenly among --workers {config.run.workers} (each worker takes batch / workers)"
        )
    if config.dataset is None and not config.shards:
        raise ValueError("nothing to train on: give --dataset and --root, and/or --shards")
    checkpoint.storage_dtype(config.weights_dtype)  # an unknown one is named now, not after the training
    if config.ranked and (config.shards or config.dataset is None):
        raise ValueError("--rank-weight, --extra-train and --extra-val work with a labelled --dataset, not --shards")
    if config.teacher and config.distill_mode != "none":
        for seed in config.split.seeds:
            models.describe(_teacher_for(config, seed))  # a missing or damaged teacher is named now
    _, mos_scale = _preprocessing_and_scale(config, labeled)
    return check_sources(config.model, mos_scale, config.storage_options)


def _load_labeled(config: TrainConfig):
    from dpiqa.engine.datasets import LabeledSet, load_dataset

    if config.dataset is None:
        return None
    labeled = load_dataset(
        config.dataset, config.root, storage_options=config.storage_options, **config.dataset_options
    )
    if not isinstance(labeled, LabeledSet):
        raise ValueError(f"--dataset {config.dataset} streams shards; pass them with --shards instead")
    return labeled


def _preprocessing_and_scale(config: TrainConfig, labeled) -> tuple:
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


def _materialize(ds, what: str):  # a Ray dataset
    """`ds.materialize()`, logged by this process with its size and rate: the actors' own progress lines reach
    the driver only through Ray's log forwarding (asynchronous, and off where a cluster sets `log_to_driver`)."""
    start = time.monotonic()
    ds = ds.materialize()
    seconds = time.monotonic() - start
    rows = ds.count()
    log.info("%s: %d images in %.1fs (%.1f images/s)", what, rows, seconds, rows / max(seconds, 1e-9))
    return ds


def _datasets(config: TrainConfig, labeled, split, preprocessing, mos_scale: float):
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
                gpus = 1.0 if _use_gpu(config) else 0.0
                train = data.with_teacher(
                    train,
                    _teacher_for(config, split.seed),
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
                    train = _materialize(train, f"{config.job}: the teacher's outputs")
        # Materialised once (decoding, teacher outputs, cached features), then served in another seeded
        # permutation every epoch.
        what = "the training set's backbone features" if cache else "the training set"
        train = _materialize(cached(train, images).select_columns(columns), f"{config.job}: {what}")
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
            val = _materialize(cached(val).select_columns([*pixels, "target", *rank_columns]), f"{config.job}: {what}")
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
        raise ValueError("nothing to train on: give --dataset/--root and/or --shards")
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


def _use_gpu(config: TrainConfig) -> bool:
    import ray

    if config.run.use_gpu is not None:
        return config.run.use_gpu
    return ray.cluster_resources().get("GPU", 0) >= config.run.workers


def _storage(config: TrainConfig) -> tuple[str, object | None]:
    """Ray Train's storage path and, for object stores, a filesystem honouring our storage options
    (pyarrow's own S3 filesystem would ignore e.g. a custom endpoint)."""
    location = config.storage or join(config.output, "_train")
    if "://" not in location:
        Path(location).mkdir(parents=True, exist_ok=True)
        return str(Path(location).resolve()), None
    fs, path = get_fs(location, config.storage_options)
    return path, storage.arrow_filesystem(fs)


def _train_split(
    config: TrainConfig,
    labeled,
    seed: int,
    out: str,
    sources: str | None,
    local: bool = False,
) -> dict:
    import ray.train
    from ray.train.torch import TorchTrainer

    from dpiqa import models
    from dpiqa.engine.evaluate import evaluate
    from dpiqa.engine.training import data
    from dpiqa.models import checkpoint

    identity = config.identity()
    card = checkpoint.read_json(out, checkpoint.CARD_NAME) if _exists(out, config) else None
    if (
        card
        and card.get("training", {}).get("identity") == identity
        and card.get("training", {}).get("seed") == seed
        and card.get("weights_dtype") == config.weights_dtype
    ):
        log.info("%s: split %d already trained at %s; skipping", config.job, seed, out)
        return {
            "seed": seed,
            "output": out,
            "metrics": card.get("metrics", {}),
            "best_epoch": card["training"].get("best_epoch"),
        }

    split = (
        make_split(labeled.names, seed, config.split.fractions, groups=labeled.groups, grouped=config.split.grouped)
        if labeled is not None
        else None
    )
    if split is None:
        from dpiqa.engine.splits import Split

        split = Split(seed, np.zeros(0, int), np.zeros(0, int), np.zeros(0, int))
    preprocessing, mos_scale = _preprocessing_and_scale(config, labeled)
    protocol = config.protocol()
    train, val, cached_features, images_per_epoch = _datasets(config, labeled, split, preprocessing, mos_scale)
    use_gpu = _use_gpu(config)
    loop = LoopConfig(
        model=config.model,
        mos_scale=mos_scale,
        epochs=protocol["epochs"],
        batch_size=protocol["batch_per_worker"],
        lr=protocol["lr"],
        milestones=tuple(protocol["milestones"]),
        precision=config.precision,
        distill_mode=config.distill_mode,
        seed=seed,
        threads=config.run.threads,
        has_val=val is not None,
        cached_features=cached_features,
        storage_options=config.storage_options,
        images_per_epoch=images_per_epoch,
        rank_weight=config.rank_weight,
        rank_margin=config.rank_margin,
    )
    epoch_batches = train if isinstance(train, data.EpochBatches) else None
    datasets = {} if epoch_batches is not None else {"train": train}
    if val is not None:
        datasets["val"] = val
    from ray.data import ExecutionOptions

    name = f"{config.job}-{identity}-split{seed}"
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
            resumed_after = protocol["epochs"] - 1
        best_ckpt, best_metrics = _best(result.best_checkpoints or [], (result.checkpoint, final), val is not None)
    if resumed_after >= protocol["epochs"] - 1:
        # A rerun of a finished run (another --weights-dtype) trains nothing: its card keeps the run's history
        # and says so (resumed at the epoch after the last; `seconds` is this rerun's).
        final = {**final, "resumed_at_epoch": protocol["epochs"]}
    with best_ckpt.as_directory() as d:
        model = checkpoint.round_weights(models.load_model(str(Path(d) / MODEL_DIR)), config.weights_dtype)
    metrics = {"val": {k[4:]: v for k, v in best_metrics.items() if k.startswith("val_")}}
    if labeled is not None and len(split.test):
        scorer = models.Scorer(model, RunOptions(device="cuda" if use_gpu else "cpu", precision=config.precision))
        metrics["test"] = evaluate(scorer, labeled, split.test, storage_options=config.storage_options)
        log.info(
            "%s split %d: test SRCC %.4f PLCC %.4f (best epoch %s)",
            config.job,
            seed,
            metrics["test"]["srcc"],
            metrics["test"]["plcc"],
            best_metrics.get("epoch"),
        )
    training = {
        "job": config.job,
        "identity": identity,
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
        "teacher": _teacher_identity(_teacher_for(config, seed)),
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
    model.save_pretrained(out, card={"training": training, "metrics": metrics}, weights_dtype=config.weights_dtype)
    return {"seed": seed, "output": out, "metrics": metrics, "best_epoch": best_metrics.get("epoch")}


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


def _table_identity(table: str | None, storage_options: dict | None) -> dict | None:
    if table is None:
        return None
    fs, path = get_fs(table, storage_options)
    raw = fs.cat_file(path)
    return {"table": table, "rows": raw.count(b"\n") - 1, "sha256": hashlib.sha256(raw).hexdigest()}


def _teacher_for(config: TrainConfig, seed: int) -> str | None:
    return config.teacher.replace("{seed}", str(seed)) if config.teacher else None


def _teacher_identity(teacher: str | None) -> dict | None:
    if teacher is None:
        return None
    from dpiqa import models

    info = models.describe(teacher)
    return {"model": teacher, "checkpoint_hash": info.checkpoint_hash, "architecture": info.architecture}


def _exists(out: str, config: TrainConfig) -> bool:
    fs, path = get_fs(out, config.storage_options)
    return fs.exists(storage.fs_join(path, "card.json"))
