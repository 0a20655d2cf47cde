"""Checkpoints of a training run in this process (`--executor local`), kept on the run's storage.

A one-worker job on the machine it is started on runs its loop in Ray Train's local mode
(`ScalingConfig(num_workers=0)`): the same `ray.train` calls (context, dataset shards, report) in this
process, without the controller and worker actors (a worker process, its torch import and model build:
`bench/train_executor.py` measured a small job's training at 26.2 s on Ray Train's worker and 3.8 s here,
on a 2-core machine). Local mode keeps only the last reported checkpoint, in memory, and
restores none. A killed run must resume and the best epoch must be found, so `LocalCheckpoints` keeps them
on storage itself: one folder per epoch, `metrics.json` written last (a folder without it was cut short and
is ignored), the latest and the best `keep` by the selection score kept, the others deleted.
"""

from __future__ import annotations

import json
import math
import posixpath
from dataclasses import dataclass
from pathlib import Path

from dpiqa.storage import arrow_filesystem, get_fs

METRICS = "metrics.json"
PREFIX = "epoch-"


@dataclass(frozen=True)
class LocalCheckpoints:
    """Where an in-process training run keeps its checkpoints, and how many.

    Args:
        url: the run's folder (local path or fsspec URL), `STORAGE/NAME/local`.
        storage_options: fsspec options for `url`.
        keep: checkpoints kept by `score` besides the latest (Ray Train's `num_to_keep`).
        score: the metric that ranks them (higher is better); None: the latest `keep` are kept.
    """

    url: str
    storage_options: dict | None = None
    keep: int = 2
    score: str | None = None

    def _fs(self):
        fs, root = get_fs(self.url, self.storage_options)
        return fs, root

    def entries(self) -> list[tuple[str, dict]]:
        """The complete checkpoints as `(path, metrics)`, oldest epoch first."""
        fs, root = self._fs()
        if not fs.exists(root):
            return []
        out = []
        for path in sorted(fs.ls(root, detail=False)):
            if not posixpath.basename(path.rstrip("/")).startswith(PREFIX):
                continue
            try:
                metrics = json.loads(fs.cat_file(posixpath.join(path, METRICS)))
            except FileNotFoundError:
                continue  # cut short while it was written
            out.append((path, metrics))
        return sorted(out, key=lambda e: e[1]["epoch"])

    def latest(self):  # ray.train.Checkpoint | None
        """The last complete checkpoint (where a rerun resumes), or None."""
        entries = self.entries()
        return self._checkpoint(entries[-1][0]) if entries else None

    def best(self) -> list[tuple[object, dict]]:
        """Every kept checkpoint with its metrics (`ray.train.Result.best_checkpoints`' form)."""
        return [(self._checkpoint(path), metrics) for path, metrics in self.entries()]

    def add(self, directory: str | Path, metrics: dict) -> None:
        """Copy a checkpoint folder in as the epoch `metrics["epoch"]`, then drop the ones no longer kept."""
        fs, root = self._fs()
        target = posixpath.join(root, f"{PREFIX}{int(metrics['epoch']):06d}")
        if fs.exists(target):
            fs.rm(target, recursive=True)
        fs.makedirs(target, exist_ok=True)
        for file in sorted(Path(directory).rglob("*")):
            if file.is_file():
                dest = posixpath.join(target, file.relative_to(directory).as_posix())
                fs.makedirs(posixpath.dirname(dest), exist_ok=True)
                fs.put_file(str(file), dest)
        with fs.open(posixpath.join(target, METRICS), "wt") as f:
            json.dump(metrics, f)
        self._prune()

    def _prune(self) -> None:
        entries = self.entries()
        latest = entries[-1][0] if entries else None
        if self.score:

            def rank(entry: tuple[str, dict]) -> tuple[float, int]:
                value = entry[1].get(self.score)
                ok = isinstance(value, (int, float)) and math.isfinite(value)
                return (value if ok else -math.inf, -entry[1]["epoch"])

            kept = {path for path, _ in sorted(entries, key=rank, reverse=True)[: self.keep]}
        else:
            kept = {path for path, _ in entries[-self.keep :]}
        fs, _ = self._fs()
        for path, _ in entries:
            if path not in kept and path != latest:
                fs.rm(path, recursive=True)

    def _checkpoint(self, path: str):
        import ray.train

        if "://" not in self.url:
            return ray.train.Checkpoint.from_directory(path)
        return ray.train.Checkpoint(path, filesystem=arrow_filesystem(self._fs()[0]))
