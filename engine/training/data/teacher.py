"""A fixed model's outputs for training: the local output cache, the teacher's outputs, a scored run's."""

from __future__ import annotations

import hashlib
import math

import numpy as np

from dpiqa.engine import schema
from dpiqa.engine.output import MAPS_DIR, OutputLocation
from dpiqa.engine.stages.base import Batch, Stage
from dpiqa.engine.training.data.labeled import object_array
from dpiqa.models.preprocessing import Preprocessing
from dpiqa.models.run_options import RunOptions


class OutputCache:
    """What a fixed model computed for each input image, on a local disk, so that a training job killed while
    it materialises its data (teacher outputs, a frozen backbone's features: the slow part on a CPU) resumes
    where it was instead of starting over. An entry is keyed by the SHA-256 of the decoded input pixels (the
    model's input exactly) under a folder named by the model's identity; written atomically.

    Args:
        directory: the cache's root (local).
        identity: what determines the outputs (a checkpoint hash, a config): entries of another model are
            never read.
    """

    def __init__(self, directory: str, identity: str) -> None:
        from pathlib import Path

        self.root = Path(directory) / hashlib.sha256(identity.encode()).hexdigest()[:16]
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(image: np.ndarray, statistics: np.ndarray | None = None) -> str:
        """The input's key: its pixels, and the statistics measured before the resize where the model reads them
        (two images that resize to the same pixels may differ there)."""
        image = np.ascontiguousarray(image)
        digest = hashlib.sha256(f"{image.dtype}{image.shape}".encode() + image.tobytes())
        if statistics is not None:
            digest.update(np.ascontiguousarray(statistics, dtype=np.float32).tobytes())
        return digest.hexdigest()

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        path = self.root / key[:2] / f"{key}.npz"
        if not path.exists():
            return None
        try:
            with np.load(path) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError):  # a damaged entry is recomputed
            return None

    def put(self, key: str, **arrays: np.ndarray) -> None:
        import os

        folder = self.root / key[:2]
        folder.mkdir(exist_ok=True)
        tmp = folder / f"{key}.{os.getpid()}.tmp.npz"
        np.savez(tmp, **arrays)
        tmp.rename(folder / f"{key}.npz")


class CachedScores(Stage):
    """A `ScoreStage` with maps (the teacher) whose per-image score and map are kept in an `OutputCache`: a
    batch whose every image is cached is answered from the disk without the model."""

    name = "cached-score"

    def __init__(self, stage, cache_dir: str, identity: str) -> None:  # ScoreStage
        self.stage, self.cache_dir, self.identity = stage, cache_dir, identity
        self.num_cpus, self.num_gpus, self.batch_size = stage.num_cpus, stage.num_gpus, stage.batch_size
        self.cache = None

    def setup(self) -> None:
        self.cache = OutputCache(self.cache_dir, self.identity)

    def __call__(self, batch: Batch) -> Batch:
        if self.cache is None:
            self.setup()
        keys = [OutputCache.key(img) for img in batch["image"]]
        hits = [self.cache.get(k) for k in keys]
        if all(h is not None for h in hits) and all(s == schema.OK for s in batch["status"]):
            out = {k: v for k, v in batch.items() if k not in ("jpeg", "on_device")}
            out["score"] = np.asarray([float(h["score"]) for h in hits], np.float32)
            out["map"] = object_array([h["map"].tobytes() for h in hits])
            return out
        if self.stage.scorer is None:
            self.stage.setup()
        out = self.stage(batch)
        for key, status, score, qmap in zip(keys, out["status"], out["score"], out["map"], strict=True):
            if status == schema.OK:
                self.cache.put(key, score=np.float32(score), map=np.frombuffer(qmap, np.float16))
        return out


def with_teacher(
    ds,
    teacher: str,
    preprocessing: Preprocessing,
    device: str = "auto",
    batch_size: int = 16,
    num_gpus: float = 0.0,
    threads: int | None = None,
    total: int | None = None,
    cache_dir: str | None = None,
):
    """Adds the teacher's `teacher_score` (MOS units) and `teacher_map` to every row, computed once by an
    actor that loads the teacher (the engine's own scoring stage) on the images the student trains on;
    it logs progress lines (`total`: the images expected).

    Raises:
        ValueError: the teacher takes another input (size, resize filter, value range) than the student:
            its maps would be of other images.
    """
    from dataclasses import replace

    from dpiqa import models

    theirs = models.describe(teacher).preprocessing
    pixels = replace(preprocessing, statistics=())  # what the teacher sees of the student's input
    if replace(theirs, statistics=()) != pixels:
        raise ValueError(
            f"teacher {teacher} takes {theirs} but the student {preprocessing}: give the student the "
            "teacher's input (--image-size, --set interpolation=...) so both see the same images"
        )

    from dpiqa.engine.executor.ray_data import actor_pool
    from dpiqa.engine.stages.score import ScoreStage

    def mark_ok(batch: Batch) -> Batch:
        n = len(batch["image"])
        return {**batch, "status": object_array([schema.OK] * n), "error": object_array([None] * n)}

    def rename(batch: Batch) -> Batch:
        out = {k: v for k, v in batch.items() if k not in ("status", "error", "score", "map")}
        out["teacher_score"] = batch["score"].astype(np.float32)
        out["teacher_map"] = batch["map"]
        return out

    stage = ScoreStage(
        teacher,
        RunOptions(device=device, threads=threads),
        batch_size=batch_size,
        num_gpus=num_gpus,
        write_maps=True,
        keep_images=True,
    )
    if cache_dir:
        stage = CachedScores(stage, cache_dir, f"teacher {models.describe(teacher).checkpoint_hash} {pixels}")
    ds = ds.map_batches(mark_ok, batch_format="numpy")
    ds = actor_pool(ds, stage, progress=("distill: teacher outputs", total))
    return ds.map_batches(rename, batch_format="numpy")


class TeacherOutputs:
    """The quality maps and scores a `dpiqa score --write-maps` run wrote, per shard, in index order. Scores are
    read where they are (a shard's own file, or its rows of a part `dpiqa compact` wrote); maps are never
    compacted and stay per shard (`maps/NAME.parquet`)."""

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        from dpiqa.engine.scores import ScoredRun

        self.location = OutputLocation(url, storage_options)
        if not self.location.done_names():
            raise ValueError(f"{url}: no completed shard of teacher outputs (run `dpiqa score --write-maps`)")
        self.shards = {s.url: s for s in ScoredRun(url, storage_options).shards}

    def rows(self, shard: str) -> dict[int, tuple[float, bytes]]:
        """`index -> (score in MOS units, map bytes)` for one shard ({} when it was not scored)."""
        import pyarrow.parquet as pq

        scored = self.shards.get(shard)
        if scored is None:
            return {}
        fs, base = self.location.fs, self.location.path.rstrip("/")
        scores = scored.read(fs, ["index", "score"]).to_pydict()
        with fs.open(f"{base}/{MAPS_DIR}/{scored.name}.parquet", "rb") as f:
            maps = pq.read_table(f, columns=["index", "map"]).to_pydict()
        score_of = dict(zip(scores["index"], scores["score"], strict=True))
        return {
            i: (score_of.get(i) if score_of.get(i) is not None else math.nan, m)
            for i, m in zip(maps["index"], maps["map"], strict=True)
        }
