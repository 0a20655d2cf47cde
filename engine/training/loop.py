"""The per-worker training loop (Ray Train `TorchTrainer`): teacher training or student distillation.

Runs on every worker: builds the model, resumes from Ray Train's latest checkpoint when there is one,
wraps it in DDP, and per epoch trains on its shard of the data, validates on rank 0 and reports
metrics with a checkpoint (our model format plus the optimizer state, no pickle). With one worker in the
job's own process (Ray Train's local mode, `LoopConfig.local`) the same loop keeps and resumes its
checkpoints through `dpiqa.engine.training.local.LocalCheckpoints`.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dpiqa.engine.training.config import TrainConfig
from dpiqa.engine.training.local import LocalCheckpoints

log = logging.getLogger(__name__)

MODEL_DIR = "model"


@dataclass(frozen=True)
class LoopConfig:
    """Everything the workers need (plain data: it travels to every worker): the job as given and what the
    driver decided for this split, nothing copied out of the job.

    Args:
        job: the training job (`TrainConfig`): the model, the protocol (`TrainConfig.protocol()`: epochs, lr,
            milestones and gamma, the batch per worker), precision, distillation mode, ranking loss, the torch
            threads per worker (`run.threads`) and the storage options the model's weights are read with.
        mos_scale: the labels' MOS scale, written into the model config (scores come out in those units).
        seed: the split's seed: seeds initialisation and the per-epoch data order.
        has_val: a `val` dataset was given.
        cached_features: the rows hold a frozen backbone's `features` instead of `image`.
        images_per_epoch: the global number of training images per epoch, when known (for progress lines).
        shuffle_buffer: rows mixed locally per epoch when shards stream (a labelled set is shuffled whole).
        local: the loop runs in this process (Ray Train's local mode, one worker): its checkpoints are kept and
            resumed from here, not by Ray Train.
        device: the device of a loop in this process (Ray Train gives its workers theirs).
    """

    job: TrainConfig
    mos_scale: float
    seed: int = 0
    has_val: bool = True
    cached_features: bool = False
    images_per_epoch: int | None = None
    shuffle_buffer: int = 4096
    local: LocalCheckpoints | None = None
    device: str = "cpu"

    @property
    def epochs(self) -> int:
        return self.job.protocol()["epochs"]


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 on a GPU that has it, fp16 on an older GPU, fp32 on the CPU."""
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _autocast(precision: str, device: torch.device):
    import contextlib

    precision = resolve_precision(precision, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return (torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()), precision


def train_loop_per_worker(cfg: LoopConfig, epoch_batches=None) -> None:  # data.EpochBatches
    """The Ray Train worker function.

    Args:
        cfg: what to train and how.
        epoch_batches: a materialised training set served as seeded global batches per epoch (each worker
            its slice); None to read Ray Train's `train` dataset shard (streaming shards).
    """
    import ray.train
    import ray.train.torch
    from ray.train.v2._internal.execution import context as train_context

    from dpiqa.engine.metrics import compute_metrics
    from dpiqa.engine.progress import Progress
    from dpiqa.engine.training.data import to_torch
    from dpiqa.engine.training.model import build_model
    from dpiqa.engine.training.state import load_state, save_state
    from dpiqa.models.distill import distillation_loss, ranking_loss, teacher_loss

    # Ray Train logs "Reporting training result N: <every metric>" at INFO from a logger named after its file,
    # outside the `ray.train` names that RunConfig's LoggingConfig(log_level="WARNING") filters (run.py)
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    job, protocol = cfg.job, cfg.job.protocol()
    epochs, batch_size = protocol["epochs"], protocol["batch_per_worker"]
    if job.run.threads:
        torch.set_num_threads(job.run.threads)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(cfg.seed)
    model = build_model(job.model, cfg.mos_scale, job.storage_options)
    start_epoch, best = 0, None
    checkpoint = cfg.local.latest() if cfg.local is not None else ray.train.get_checkpoint()
    state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            model.load_state_dict(type(model).from_pretrained(str(Path(d) / MODEL_DIR), verify=False).state_dict())
            state = load_state(d)
        start_epoch, best = int(state["epoch"]) + 1, state.get("best")
        log.info("rank %d: resuming after epoch %d", rank, start_epoch - 1)
    # per epoch: train loss and validation SRCC, kept in the checkpoint so a resumed run reports them all
    history: list[dict] = list(state.get("history") or []) if state is not None else []
    config, preprocessing, map_shape = model.config, model.config.preprocessing, tuple(model.config.map_shape)
    device = torch.device(cfg.device) if cfg.local is not None else ray.train.torch.get_device()
    if world > 1 and device.type == "cuda":
        # BatchNorm statistics over the global batch, as on one GPU (the paper's): with 8 workers and the
        # teacher's batch of 16, per-worker statistics would be of 2 images. (SyncBatchNorm needs a GPU; on
        # CPU workers each normalises over its own part of the batch.)
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = model.to(device) if cfg.local is not None else ray.train.torch.prepare_model(model)
    module = ddp.module if hasattr(ddp, "module") else ddp
    optimizer = torch.optim.Adam([p for p in ddp.parameters() if p.requires_grad], lr=protocol["lr"])
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=protocol["milestones"], gamma=protocol["gamma"]
    )
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    autocast, precision = _autocast(job.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    steps = int(state.get("steps", 0)) if state is not None else 0

    train = ray.train.get_dataset_shard("train") if epoch_batches is None else None
    val = ray.train.get_dataset_shard("val") if rank == 0 and cfg.has_val else None
    for epoch in range(start_epoch, epochs):
        t0 = time.monotonic()
        torch.manual_seed(cfg.seed * 1000 + epoch)
        ddp.train()
        losses, seen = [], 0
        progress = (
            Progress(f"epoch {epoch + 1}/{epochs}", cfg.images_per_epoch, done_unit="images") if rank == 0 else None
        )
        if epoch_batches is not None:
            batches = epoch_batches.batches(epoch, cfg.seed, batch_size * world, rank, world)
        else:
            batches = train.iter_batches(
                batch_size=batch_size,
                batch_format="numpy",
                local_shuffle_buffer_size=cfg.shuffle_buffer,
                local_shuffle_seed=cfg.seed * 1000 + epoch,
            )
        for batch in batches:
            b = to_torch(batch, map_shape if job.model.kind == "student" else None)
            target = b["target"].to(device)
            with autocast:
                if cfg.cached_features:
                    score, quality_map = ddp(b["features"].to(device), from_backbone=True)
                else:
                    measured = b["statistics"].to(device) if "statistics" in b else None
                    score, quality_map = ddp(
                        preprocessing.to_tensor(b["image"].to(device)), **preprocessing.model_kwargs(measured)
                    )
            score, quality_map = score.float(), quality_map.float()
            if job.model.kind == "teacher":
                loss = teacher_loss(score, target)
            else:
                teacher_score = b["teacher_score"].to(device) / config.mos_scale if "teacher_score" in b else None
                loss = distillation_loss(
                    score,
                    quality_map,
                    target,
                    teacher_score,
                    b["teacher_map"].to(device) if "teacher_map" in b else None,
                    mode=job.distill_mode,
                ).total
            if job.rank_weight and "rank_group" in b:
                ranked = ranking_loss(
                    score,
                    b["rank_group"].to(device),
                    b["rank_family"].to(device),
                    b["level"].to(device),
                    margin=job.rank_margin,
                )
                if ranked is not None:
                    loss = loss + job.rank_weight * ranked
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            seen += len(target)
            steps += 1
            if progress is not None:  # this worker's images times the workers: the epoch's share done
                progress.update(0, seen * world)
        scheduler.step()
        train_loss = float(np.mean(losses)) if losses else math.nan
        if world > 1 and torch.distributed.is_initialized():
            # The epoch's loss over every worker's part of each global batch (what one worker training on the
            # whole batch reports), not rank 0's part alone: one all-reduce of two numbers per epoch.
            total = torch.tensor([sum(losses), len(losses)], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(total)
            train_loss = float(total[0] / total[1]) if total[1] else math.nan
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            "lr": optimizer.param_groups[0]["lr"],
            "images": seen * world,
            "steps": steps,
            "resumed_at_epoch": start_epoch,  # 0 for a fresh start; else the checkpoint's next epoch
            "precision": precision,
            "seconds": round(time.monotonic() - t0, 2),
        }
        if rank == 0:
            metrics.update(
                _validate(
                    module, val, preprocessing, device, autocast, config.mos_scale, compute_metrics, cfg.cached_features
                )
            )
            score_key = metrics.get("val_select", -metrics["train_loss"])
            if not math.isfinite(score_key):  # constant predictions (an untrained model) have no SRCC
                score_key = -math.inf
            if best is None or score_key > best["score"]:
                best = {"epoch": epoch, "score": score_key}
            metrics["best_epoch"] = best["epoch"]
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": metrics["train_loss"],
                    "val_srcc": metrics.get("val_srcc"),
                    "seconds": metrics["seconds"],
                }
            )
            metrics["history"] = list(history)
            log.info(
                "epoch %d/%d: train loss %.5f, val SRCC %s PLCC %s table SRCC %s PLCC %s rank SRCC %s, "
                "%d images in %d steps, %.1fs",
                epoch + 1,
                epochs,
                metrics["train_loss"],
                _fmt(metrics.get("val_srcc")),
                _fmt(metrics.get("val_plcc")),
                _fmt(metrics.get("val_table_srcc")),
                _fmt(metrics.get("val_table_plcc")),
                _fmt(metrics.get("val_rank_srcc")),
                metrics["images"],
                len(losses),
                metrics["seconds"],
            )
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                module.save_pretrained(str(Path(d) / MODEL_DIR))
                save_state(
                    d,
                    optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(),
                    epoch=epoch,
                    best=best,
                    steps=steps,
                    history=history,
                )
                if cfg.local is not None:
                    cfg.local.add(d, metrics)
                else:
                    ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=ckpt)


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


@torch.no_grad()
def _validate(
    model,
    val,
    preprocessing,
    device,
    autocast,
    mos_scale,
    compute_metrics,
    cached_features: bool = False,
) -> dict:
    if val is None:
        return {}
    model.eval()
    from dpiqa.engine.training.data import batch_tensor

    preds, mos, ranks = [], [], []
    for batch in val.iter_batches(batch_size=64, batch_format="numpy"):
        with autocast:
            if cached_features:
                score, _ = model(batch_tensor(batch["features"]).to(device), from_backbone=True)
            else:
                measured = batch_tensor(batch["statistics"]).to(device) if "statistics" in batch else None
                score, _ = model(
                    preprocessing.to_tensor(batch_tensor(batch["image"]).to(device)),
                    **preprocessing.model_kwargs(measured),
                )
        preds.append(score.float().cpu().numpy() * mos_scale)
        mos.append(batch["target"].astype(np.float64) * mos_scale)
        if "rank_group" in batch:
            ranks.append(np.stack([np.asarray(batch[c], np.int64) for c in ("rank_group", "rank_family", "level")], 1))
    model.train()
    if not preds:
        return {}
    pred, truth = np.concatenate(preds), np.concatenate(mos)
    out = {}
    ranked = np.concatenate(ranks) if ranks else np.full((len(pred), 3), -1, np.int64)
    keep = np.isfinite(truth) & (ranked[:, 0] < 0)  # the labelled set's own validation images
    if keep.sum() >= 3:
        m = compute_metrics(pred[keep], truth[keep])
        out = {"val_srcc": m["srcc"], "val_plcc": m["plcc"], "val_krcc": m["krcc"], "val_rmse": m["rmse"]}
    # Labelled references of a ranking table (`--extra-val` rows at level 0 with a MOS: another labelled set's
    # validation part, e.g. authentic photographs beside AGIQA-3K) are a second labelled validation set.
    table = np.isfinite(truth) & (ranked[:, 0] >= 0) & (ranked[:, 2] == 0)
    if table.sum() >= 3:
        m = compute_metrics(pred[table], truth[table])
        out.update({"val_table_srcc": m["srcc"], "val_table_plcc": m["plcc"]})
    rank = rank_srcc(pred, ranked)
    if rank is not None:
        out["val_rank_srcc"] = rank
    return {**out, **selection(out)}


def rank_srcc(pred: np.ndarray, ranked: np.ndarray) -> float | None:
    """Mean over (source, family) of Spearman's rho between distortion level (the reference at 0) and score,
    for rows with a group (`ranked`: rank_group, rank_family, level per row); -1 ranks every level right."""
    from scipy.stats import spearmanr

    rows = ranked[:, 0] >= 0
    if not rows.any():
        return None
    rhos = []
    for group in np.unique(ranked[rows, 0]):
        mine = rows & (ranked[:, 0] == group)
        ref = mine & (ranked[:, 2] == 0)
        for family in np.unique(ranked[mine & ~ref, 1]):
            take = ref | (mine & (ranked[:, 1] == family))
            if len(np.unique(ranked[take, 2])) >= 3:
                rho = spearmanr(ranked[take, 2], pred[take]).statistic
                if np.isfinite(rho):
                    rhos.append(rho)
    return float(np.mean(rhos)) if rhos else None


def selection(metrics: dict) -> dict:
    """`val_select`, what picks the epoch: the labelled set's validation SRCC, or with a ranking validation
    set the mean of that SRCC, the SRCC on the table's labelled references (where it has some) and minus the
    ranking SRCC (each 1 at best)."""
    parts = [
        metrics[k] for k in ("val_srcc", "val_table_srcc") if metrics.get(k) is not None and math.isfinite(metrics[k])
    ]
    if metrics.get("val_rank_srcc") is not None and math.isfinite(metrics["val_rank_srcc"]):
        parts.append(-metrics["val_rank_srcc"])
    return {"val_select": float(np.mean(parts))} if parts else {}
