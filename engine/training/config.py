"""What a training job trains (`TrainConfig`), how it runs (`TrainRun`), the paper's protocol defaults and the result."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from dpiqa.engine.executor import EXECUTORS
from dpiqa.engine.identity import identity_fields, setting
from dpiqa.engine.splits import SplitConfig
from dpiqa.engine.training.model import ModelSpec
from dpiqa.errors import UsageError
from dpiqa.models.checkpoint_weights import WEIGHTS_DTYPES
from dpiqa.models.distill import MODES
from dpiqa.models.run_options import PRECISION_NAMES

# The paper's protocol: epoch(s) at which the learning rate is multiplied by 0.2, per dataset.
# AGIQA-3K is not in the paper; it gets KonIQ-10k's schedule.
MILESTONES = {
    "teacher": {"koniq": (5,), "spaq": (5,), "clive": (10,), "livefb": (2,), "agiqa3k": (5,)},
    "student": {"koniq": (5,), "clive": (10, 25), "livefb": (4,), "spaq": (6,), "agiqa3k": (5,)},
}
# The protocols a training job follows (`TrainConfig.protocol_name`; `dpiqa.jobs.training.PROTOCOLS` holds their
# defaults for the command line).
PROTOCOL_NAMES = ("ours", "paper")
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

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UsageError(f"--workers must be at least 1, not {self.workers}")
        if not self.cpus_per_worker > 0:
            raise UsageError(f"--cpus-per-worker must be > 0, not {self.cpus_per_worker}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, not {self.threads}")
        if self.max_failures < 0:
            raise UsageError(f"--max-failures must be >= 0, not {self.max_failures}")
        if self.executor not in EXECUTORS:
            raise UsageError(f"--executor must be one of {', '.join(EXECUTORS)}, not {self.executor!r}")
        if self.executor == "local" and self.workers > 1:
            raise UsageError(
                f"--executor local runs one worker in this process; --workers {self.workers} needs --executor ray"
            )


@dataclass(frozen=True)
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
    output: str = setting()
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
    cache_features: bool = setting(True)
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    milestones: tuple[int, ...] | None = None
    precision: str = "auto"
    distill_mode: str = "feature"
    run: TrainRun = setting(default_factory=TrainRun)
    extra_train: str | None = None
    extra_val: str | None = None
    rank_weight: float = 0.0
    rank_margin: float = 0.05
    storage: str | None = setting(None)
    storage_options: dict | None = setting(None)
    command: list[str] = setting(default_factory=list)
    weights_dtype: str | None = setting(None)

    def __post_init__(self) -> None:
        """What the options alone can tell is refused here, for an API caller as for the command line (no file
        is read: `checks.check_before_start` checks what the files hold)."""
        if self.protocol_name not in PROTOCOL_NAMES:
            raise UsageError(f"--protocol must be one of {', '.join(PROTOCOL_NAMES)}, not {self.protocol_name!r}")
        if self.protocol_name == "paper" and self.split.fractions[1] != 0:
            raise UsageError(
                "--protocol paper has no validation part (it trains to the last epoch): "
                "leave --fractions out or give 0 for the validation fraction"
            )
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
        if self.lr is not None and not self.lr > 0:
            raise UsageError(f"--lr must be > 0, not {self.lr}")
        if self.synthetic < 0:
            raise UsageError(f"--synthetic must be >= 0, not {self.synthetic}")
        if self.rank_weight < 0 or not self.rank_margin > 0:
            raise UsageError(
                f"--rank-weight must be >= 0 and --rank-margin > 0, not {self.rank_weight} and {self.rank_margin}"
            )
        if self.precision not in PRECISION_NAMES:
            raise UsageError(f"--precision must be one of {', '.join(PRECISION_NAMES)}, not {self.precision!r}")
        if self.distill_mode not in MODES:
            raise UsageError(f"--mode must be one of {', '.join(MODES)}, not {self.distill_mode!r}")
        if self.weights_dtype is not None and self.weights_dtype not in WEIGHTS_DTYPES:
            raise UsageError(f"weights_dtype {self.weights_dtype!r} is not one of {', '.join(WEIGHTS_DTYPES)}")
        if self.protocol()["batch_size"] % self.run.workers:
            raise UsageError(
                f"--batch-size {self.protocol()['batch_size']} is the global batch and must divide "
                f"evenly among --workers {self.run.workers} (each worker takes batch / workers)"
            )
        if self.dataset is None and not self.shards:
            raise UsageError("nothing to train on: give --dataset and --root, and/or --input")
        if self.ranked and (self.shards or self.dataset is None):
            raise UsageError("--rank-weight, --extra-train and --extra-val work with a labelled --dataset, not --input")
        if (
            self.model.kind == "student"
            and not self.teacher
            and not self.teacher_outputs
            and self.distill_mode != "none"
        ):
            raise UsageError(
                "student ablations distill from a teacher: pass --teacher"
                if self.job.startswith("ablate")
                else "distill needs --teacher (with --dataset) or --teacher-outputs (with --input); "
                "or --mode none to train the student on labels alone"
            )

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

    def teacher_for(self, seed: int) -> str | None:
        """The teacher checkpoint of the split with this seed (`{seed}` in `teacher` replaced), or None."""
        return self.teacher.replace("{seed}", str(seed)) if self.teacher else None

    def identity(self) -> str:
        """A hash of what determines the trained model (its identity fields, `dpiqa.engine.identity`), not of where
        and how it runs: a rerun with the same identity resumes the run (Ray Train's run name holds the hash)."""
        keep = identity_fields(self)
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    """Per split: where the checkpoint went and its metrics; and their summary over splits."""

    splits: list[dict]
    summary: dict
