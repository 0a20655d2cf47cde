"""Training data on Ray Data: labelled images or shards, decoded to the model's input, with teacher outputs.

Rows carry `image` (uint8 `(H, W, 3)` at the model's size; for a model that reads statistics measured before
the resize, also `statistics`, float32 `(k,)`), `target` (MOS / mos_scale, NaN where the
sample has no label), and for distillation `teacher_score` (MOS units, NaN where missing) and
`teacher_map` (float16 bytes, None where missing). With a ranking loss they also carry `rank_group` (the
source image, int64, -1 = none), `rank_family` (the distortion family) and `level` (0 = the reference):
see `dpiqa.models.distill.ranking_loss`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from collections.abc import Iterator

import numpy as np
from PIL import Image

from dpiqa.engine import schema
from dpiqa.engine.datasets import LabeledSet, LabeledShards
from dpiqa.engine.output import MAPS_DIR, OutputLocation
from dpiqa.engine.stages.base import Batch, Stage
from dpiqa.engine.stages.decode import DecodeError, decode_image, model_input
from dpiqa.images import to_rgb
from dpiqa.models.preprocessing import Preprocessing
from dpiqa.models.run_options import RunOptions
from dpiqa.storage import get_fs, retry

log = logging.getLogger(__name__)


def _object_array(values: list) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


class ReadLabeledImages:
    """Reads and decodes `path` rows into `image` rows; an image that cannot be read or decoded is
    dropped with a warning naming the file (a training set cannot score it)."""

    def __init__(self, preprocessing: Preprocessing, storage_options: dict | None = None) -> None:
        self.preprocessing, self.storage_options = preprocessing, storage_options

    def __call__(self, batch: Batch) -> Batch:
        decoded, keep = [], []
        for i, path in enumerate(batch["path"]):
            try:
                fs, p = get_fs(str(path), self.storage_options)
                data = retry(lambda fs=fs, p=p: fs.cat_file(p), f"read {path}")
                decoded.append(decode_image(data, self.preprocessing))
            except (DecodeError, OSError) as exc:
                log.warning("training image %s dropped: %s", path, exc)
                continue
            keep.append(i)
        out = {k: v[keep] for k, v in batch.items()}
        out.update(input_columns(self.preprocessing, [d.pixels for d in decoded], [d.statistics for d in decoded]))
        return out


def input_columns(preprocessing: Preprocessing, pixels: list[np.ndarray], statistics: list[np.ndarray]) -> Batch:
    """The model-input columns of decoded rows: `image`, and `statistics` for a model that reads them."""
    h, w = preprocessing.size
    out = {"image": np.stack(pixels) if pixels else np.zeros((0, h, w, 3), np.uint8)}
    if preprocessing.statistics:
        width = preprocessing.statistics_width
        out["statistics"] = np.stack(statistics) if statistics else np.zeros((0, width), np.float32)
    return out


# Pseudo-label of a synthetically distorted training image: its reference's MOS times (1 - 0.15 * level),
# so level 1 keeps 85 % and level 5 keeps 25 %: what it teaches is the ranking by strength within a
# reference, which is what users of a quality filter need from it.
SYNTHETIC_DROP_PER_LEVEL = 0.15


class SyntheticDistortions:
    """Reads labelled images and returns a distorted copy of each (kind and level drawn per image and copy
    from a hash of its name, so every run draws the same), at the model's input size, with the reference's
    target scaled by `1 - 0.15 * level`. The distortion is applied at the image's own resolution, then the
    model's resize, as a real distorted photograph would be seen."""

    def __init__(self, preprocessing: Preprocessing, copy: int, storage_options: dict | None = None) -> None:
        self.preprocessing, self.copy, self.storage_options = preprocessing, copy, storage_options

    def __call__(self, batch: Batch) -> Batch:
        from dpiqa.engine.distortions import DISTORTIONS, LEVELS, distort

        kinds = sorted(DISTORTIONS)
        images, statistics, keep, targets, names = [], [], [], [], []
        for i, path in enumerate(batch["path"]):
            digest = hashlib.sha256(f"{batch['name'][i]}#{self.copy}".encode()).digest()
            kind, level = kinds[digest[0] % len(kinds)], LEVELS[digest[1] % len(LEVELS)]
            try:
                fs, p = get_fs(str(path), self.storage_options)
                data = retry(lambda fs=fs, p=p: fs.cat_file(p), f"read {path}")
                img = to_rgb(Image.open(io.BytesIO(data)))
                pixels = distort(img, kind, level, seed=int.from_bytes(digest[2:6], "little"))
                pixels, measured = model_input(Image.fromarray(pixels), self.preprocessing)
            except (OSError, ValueError) as exc:
                log.warning("synthetic copy of %s dropped: %s", path, exc)
                continue
            images.append(pixels)
            statistics.append(measured)
            keep.append(i)
            targets.append(float(batch["target"][i]) * (1 - SYNTHETIC_DROP_PER_LEVEL * level))
            names.append(f"{batch['name'][i]}#{kind}-{level}")
        out = {k: v[keep] for k, v in batch.items()}
        out["target"] = np.asarray(targets, dtype=np.float64)
        out["name"] = _object_array(names)
        if "level" in batch:  # a ranked set: the copy ranks below its reference (same group)
            out["rank_family"] = np.asarray([rank_id(n.rsplit("#", 1)[1].rsplit("-", 1)[0]) for n in names], np.int64)
            out["level"] = np.asarray([int(n.rsplit("-", 1)[1]) for n in names], np.int64)
        out.update(input_columns(self.preprocessing, images, statistics))
        return out


def rank_id(value: str) -> int:
    """A stable non-negative int64 id of a ranking group or family name (the same in every process)."""
    return int.from_bytes(hashlib.sha256(value.encode()).digest()[:8], "little") & (2**62 - 1)


RANK_COLUMNS = ("rank_group", "rank_family", "level")


def labeled_rows(labeled: LabeledSet, indices: np.ndarray, ranked: bool | None = None) -> list[dict]:
    """Rows for `ray.data.from_items`: path, name, target (MOS / mos_scale); `ranked=True` adds the ranking
    columns (each image the level-0 reference of its own group, its name), `ranked=False` adds them with
    no group (-1: validation rows of the labelled set), None leaves them out."""
    rows = [
        {
            "path": labeled[int(i)].path,
            "name": labeled[int(i)].name,
            "target": float(labeled[int(i)].mos / labeled.mos_scale),
        }
        for i in indices
    ]
    if ranked is not None:
        for row in rows:
            row.update(rank_group=rank_id(row["name"]) if ranked else -1, rank_family=0, level=0)
    return rows


def rank_table_rows(table: str, mos_scale: float, storage_options: dict | None = None) -> list[dict]:
    """The rows of a ranking table (`--extra-train`, `--extra-val`): a CSV with `path` (relative to the
    table's folder, or absolute/URL), `mos` (the labelled set's units; empty = unlabelled, ranked only),
    `name` (unique), `group` (the source image: rows of one group are ordered by `level` within a
    `family`; a group equal to a labelled image's name ranks against that image) and `family`, `level`
    (0 = the reference, 1..5 the distortion's strength)."""
    import pandas as pd

    from dpiqa.engine.datasets.table import _resolve
    from dpiqa.storage import get_fs

    fs, path = get_fs(table, storage_options)
    with fs.open(path, "rb") as f:
        df = pd.read_csv(f, keep_default_na=False, dtype={"mos": str, "group": str, "family": str, "name": str})
    missing = [c for c in ("path", "mos", "name", "group", "family", "level") if c not in df.columns]
    if missing:
        raise ValueError(f"{table}: ranking table lacks column(s) {', '.join(missing)}")
    base = table.replace("\\", "/").rsplit("/", 1)[0] if "/" in table else "."
    return [
        {
            "path": _resolve(str(r["path"]), base),
            "name": str(r["name"]),
            "target": float(r["mos"]) / mos_scale if str(r["mos"]).strip() else math.nan,
            "rank_group": rank_id(str(r["group"])),
            "rank_family": rank_id(str(r["family"])) if int(r["level"]) else 0,
            "level": int(r["level"]),
        }
        for r in df.to_dict("records")
    ]


def rows_dataset(
    rows: list[dict], preprocessing: Preprocessing, storage_options: dict | None = None, batch_size: int = 32
):
    """A decoded Ray dataset of `path` rows (any other columns kept)."""
    import ray

    blocks = max(1, min(len(rows) // batch_size, 64))
    return ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        ReadLabeledImages(preprocessing, storage_options), batch_size=batch_size, batch_format="numpy"
    )


def labeled_dataset(
    labeled: LabeledSet,
    indices: np.ndarray,
    preprocessing: Preprocessing,
    storage_options: dict | None = None,
    batch_size: int = 32,
    synthetic: int = 0,
    ranked: bool | None = None,
):
    """A decoded Ray dataset of part of a labelled set (small: materialized by the caller if wanted), plus
    `synthetic` distorted copies of each image with pseudo-labels (see `SyntheticDistortions`); `ranked`:
    see `labeled_rows`."""
    import ray

    rows = labeled_rows(labeled, indices, ranked)
    blocks = max(1, min(len(rows) // batch_size, 64))
    items = ray.data.from_items(rows, override_num_blocks=blocks)
    ds = items.map_batches(
        ReadLabeledImages(preprocessing, storage_options), batch_size=batch_size, batch_format="numpy"
    )
    copies = [
        items.map_batches(
            SyntheticDistortions(preprocessing, k, storage_options), batch_size=batch_size, batch_format="numpy"
        )
        for k in range(synthetic)
    ]
    return ds.union(*copies) if copies else ds


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
            out["map"] = _object_array([h["map"].tobytes() for h in hits])
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
        return {**batch, "status": _object_array([schema.OK] * n), "error": _object_array([None] * n)}

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


class ShardsWithTeacher:
    """Reads shards (rows with a `shard` URL) into labelled samples joined with the teacher's outputs by
    `(shard, index)`. Samples the teacher did not score (its failures) keep only their label; samples
    with neither a label nor teacher outputs are skipped."""

    def __init__(self, shards: LabeledShards, teacher: TeacherOutputs | None, chunk: int = 64) -> None:
        self.shards, self.teacher, self.chunk = shards, teacher, chunk

    def __call__(self, batch: Batch) -> Iterator[Batch]:
        for url in batch["shard"]:
            outputs = self.teacher.rows(str(url)) if self.teacher is not None else {}
            rows: list[tuple] = []
            for sample in self.shards.iter_shard(str(url)):
                score, qmap = outputs.get(sample.index, (math.nan, None))
                target = sample.mos / self.shards.mos_scale if math.isfinite(sample.mos) else math.nan
                if qmap is None and not math.isfinite(target):
                    continue
                rows.append((str(url), sample.index, sample.key, sample.ext, sample.image, target, score, qmap))
                if len(rows) >= self.chunk:
                    yield _shard_rows(rows)
                    rows = []
            if rows:
                yield _shard_rows(rows)


def _shard_rows(rows: list[tuple]) -> Batch:
    shard, index, key, ext, data, target, score, qmap = zip(*rows, strict=True)
    return {
        "shard": _object_array(list(shard)),
        "index": np.asarray(index, np.int64),
        "name": _object_array(list(key)),
        "ext": _object_array(list(ext)),
        "data": _object_array(list(data)),
        "target": np.asarray(target, np.float32),
        "teacher_score": np.asarray(score, np.float32),
        "teacher_map": _object_array(list(qmap)),
    }


class DecodeSamples:
    """`data` bytes -> `image`; undecodable samples are dropped with a warning."""

    def __init__(self, preprocessing: Preprocessing) -> None:
        self.preprocessing = preprocessing

    def __call__(self, batch: Batch) -> Batch:
        decoded, keep = [], []
        for i, data in enumerate(batch["data"]):
            try:
                decoded.append(decode_image(data, self.preprocessing))
                keep.append(i)
            except DecodeError as exc:
                log.warning("%s %s dropped: %s", batch["shard"][i], batch["name"][i], exc)
        out = {k: v[keep] for k, v in batch.items() if k not in ("data", "ext")}
        out.update(input_columns(self.preprocessing, [d.pixels for d in decoded], [d.statistics for d in decoded]))
        return out


def shard_dataset(
    shards: LabeledShards, teacher: TeacherOutputs | None, preprocessing: Preprocessing, seed: int | None = None
):
    """A streaming Ray dataset over labelled/unlabelled shards joined with teacher outputs; with `seed`, the
    shards come in another seeded order every epoch."""
    import ray
    from ray.data import RandomSeedConfig

    ds = ray.data.from_items([{"shard": u} for u in shards.urls], override_num_blocks=len(shards.urls))
    if seed is not None:
        ds = ds.randomize_block_order(seed=RandomSeedConfig(seed=seed, reseed_after_execution=True))
    ds = ds.map_batches(ShardsWithTeacher(shards, teacher), batch_size=1, batch_format="numpy")
    return ds.map_batches(DecodeSamples(preprocessing), batch_format="numpy")


def batch_tensor(column: np.ndarray):  # torch.Tensor (torch imported lazily)
    """A batch column as a tensor: zero-copy where numpy allows it, a copy where Ray hands out a read-only view
    of its object store (a tensor over it warns, and writing into it would be undefined)."""
    import torch

    column = np.ascontiguousarray(column)
    return torch.from_numpy(column if column.flags.writeable else column.copy())


def to_torch(batch: Batch, map_shape: tuple[int, ...] | None = None) -> dict:
    """A numpy batch -> tensors: `image` uint8, `target`, and the teacher's outputs where present
    (missing maps become NaN rows, so the loss leaves them out)."""
    import torch

    out = {"target": torch.as_tensor(batch["target"].astype(np.float32))}
    for column in ("image", "statistics", "features"):
        if column in batch:
            out[column] = batch_tensor(batch[column])
    for column in RANK_COLUMNS:
        if column in batch:
            out[column] = torch.as_tensor(np.asarray(batch[column], dtype=np.int64))
    if "teacher_map" in batch and map_shape is not None:
        maps = np.full((len(batch["teacher_map"]), *map_shape), np.nan, dtype=np.float32)
        for i, raw in enumerate(batch["teacher_map"]):
            if isinstance(raw, (bytes, bytearray, memoryview)):  # all-missing columns come back as NaN floats
                maps[i] = np.frombuffer(raw, dtype=np.float16).reshape(map_shape)
        out["teacher_map"] = torch.from_numpy(maps)
        out["teacher_score"] = torch.as_tensor(batch["teacher_score"].astype(np.float32))
    return out


class BackboneFeatures(Stage):
    """Replaces each row's `image` by the frozen backbone's features of it, computed once (`features`,
    float32 `(C, h, w)`): a student whose backbone does not train then trains its head for every epoch
    without running the backbone again. An actor stage: the model is built once per actor, exactly as the
    training workers build it, so the features are the ones the backbone would give them.

    Args:
        spec: the student being trained (`dpiqa.engine.training.model.ModelSpec`).
        mos_scale: its labels' MOS scale.
        threads: torch threads.
        storage_options: fsspec options for the weights it is built from.
        batch_size: images per call.
        cache_dir: keep each image's features in an `OutputCache` there (a rerun after a kill resumes).
        seed: the torch seed the model is built after, the training loop's (`LoopConfig.seed`): a backbone
            without pretrained weights is then the one the workers train on.
    """

    name = "backbone-features"

    def __init__(
        self,
        spec,
        mos_scale: float,
        threads: int | None = None,  # ModelSpec
        storage_options: dict | None = None,
        batch_size: int = 32,
        cache_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        self.spec, self.mos_scale, self.threads, self.storage_options = spec, mos_scale, threads, storage_options
        self.batch_size, self.cache_dir, self.seed = batch_size, cache_dir, seed
        self.model = None
        self.cache = None

    def setup(self) -> None:
        import torch

        from dpiqa.engine.training.model import build_model
        from dpiqa.models.allocator import keep_freed_memory

        if self.threads:
            torch.set_num_threads(self.threads)
        keep_freed_memory()  # the backbone's forward pass on this CPU worker, as `Scorer` runs it on a CPU
        torch.manual_seed(self.seed)  # as `dpiqa.engine.training.loop.train_loop_per_worker` builds it
        self.model = build_model(self.spec, self.mos_scale, self.storage_options).eval()
        if self.cache_dir:
            self.cache = OutputCache(self.cache_dir, backbone_identity(self.model))

    def __call__(self, batch: Batch) -> Batch:
        import torch

        preprocessing = self.model.config.preprocessing
        statistics = batch["statistics"] if preprocessing.statistics else None
        measured_rows = statistics if statistics is not None else [None] * len(batch["image"])
        keys = (
            [OutputCache.key(img, m) for img, m in zip(batch["image"], measured_rows, strict=True)]
            if self.cache is not None
            else []
        )
        hits = [self.cache.get(k) for k in keys] if self.cache is not None else []
        if hits and all(h is not None for h in hits):
            features = np.stack([h["features"] for h in hits])
        else:
            with torch.inference_mode():
                x = preprocessing.to_tensor(batch_tensor(batch["image"]))
                measured = None if statistics is None else batch_tensor(statistics)
                features = self.model.backbone_features(x, measured).float().numpy()
            for key, f in zip(keys, features, strict=False):
                self.cache.put(key, features=f)
        out = {k: v for k, v in batch.items() if k not in ("image", "statistics")}
        out["features"] = features
        return out


# The config fields besides the backbone's weights that `backbone_features` depends on.
FEATURE_FIELDS = (
    "backbone",
    "backbone_kwargs",
    "input_norm",
    "aux_features",
    "image_size",
    "interpolation",
    "value_range",
)


def backbone_identity(model) -> str:  # a DPIQAStudent
    """What a student's backbone features depend on: the backbone's weights (hashed) and `FEATURE_FIELDS`;
    not the head, so runs that try other heads over one frozen backbone reuse its cached features."""
    import hashlib
    import json

    digest = hashlib.sha256()
    for name, tensor in sorted(model.backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    fields = {f: getattr(model.config, f) for f in FEATURE_FIELDS}
    return f"backbone features {digest.hexdigest()} {json.dumps(fields, sort_keys=True, default=str)}"


def with_backbone_features(
    ds,
    spec,
    mos_scale: float,
    threads: int | None = None,
    storage_options: dict | None = None,
    total: int | None = None,
    cache_dir: str | None = None,
    seed: int = 0,
):
    """`BackboneFeatures` on one actor, with progress lines (`total`: the images expected)."""
    from dpiqa.engine.executor.ray_data import actor_pool

    stage = BackboneFeatures(spec, mos_scale, threads, storage_options, cache_dir=cache_dir, seed=seed)
    return actor_pool(ds, stage, progress=("distill: backbone features", total))


class EpochBatches:
    """A materialised training set, served as global batches of a seeded permutation that depends on the
    epoch only: every worker draws the same permutation and takes its slice of each global batch.

    Why not Ray Train's own split of a shuffled dataset: Ray reshuffles per execution of the dataset, so a
    run resumed at epoch k would see epoch 0's order again, and a worker's share of a batch would depend
    on scheduling. Here epoch k of a resumed run is epoch k of an uninterrupted one, and one worker or
    eight train on the same global batches in the same order (the paper's recipe at any scale).

    The rows stay in the object store as one numpy block per Ray block; a worker reads the blocks its
    rows lie in (zero-copy on the node that holds them, fetched and then kept on other nodes). The last
    partial global batch of an epoch is left out: its rows come up in other epochs' permutations.

    With `group_column`, the permutation is of groups, not rows: every epoch the groups come in another
    seeded order and a group's rows (in another seeded order) follow each other, so that a batch holds
    several distortion levels of one source for a ranking loss (a group cut by a batch boundary loses the
    pairs across it). Rows whose group is -1 are groups of one.

    Args:
        ds: the materialised dataset (built on the driver; this object travels to the workers).
        columns: the columns a batch carries.
        group_column: an int64 column of group ids, or None to shuffle rows.
    """

    def __init__(self, ds, columns: list[str], group_column: str | None = None) -> None:
        import ray

        # Each Ray block becomes one numpy block as `Dataset.to_numpy_refs` makes it, by one task per block that
        # also returns the block's row count and group ids (small objects: no data comes to the driver). Counting
        # in separate zero-CPU tasks had Ray start a Python worker per block at once (60 and more on a 2-CPU node,
        # each restoring its spilled block) before training could start.
        to_numpy = ray.remote(num_returns=3)(_numpy_block)
        self.refs, sizes, groups = [], [], []
        for bundle in ds.select_columns(columns).iter_internal_ref_bundles():
            for block in bundle.block_refs:
                ref, rows, group = to_numpy.remote(block, columns, group_column)
                self.refs.append(ref)
                sizes.append(rows)
                groups.append(group)
        self.sizes = np.asarray(ray.get(sizes), dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)])
        self.columns = columns
        self.groups = None
        if group_column is not None:
            parts = ray.get(groups)
            self.groups = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def steps(self, global_batch: int) -> int:
        return len(self) // global_batch

    def batches(self, epoch: int, seed: int, global_batch: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """This worker's part of each global batch of `epoch`, in order."""
        import ray

        if global_batch % world:
            raise ValueError(f"global batch {global_batch} does not divide among {world} workers")
        per_worker = global_batch // world
        order = self.order(epoch, seed)
        cache: dict[int, Batch] = {}
        for step in range(self.steps(global_batch)):
            start = step * global_batch + rank * per_worker
            rows = order[start : start + per_worker]
            blocks = np.searchsorted(self.starts, rows, side="right") - 1
            for b in np.unique(blocks):
                if int(b) not in cache:
                    cache[int(b)] = ray.get(self.refs[int(b)])
            yield {c: _take([cache[int(b)][c] for b in blocks], rows - self.starts[blocks]) for c in self.columns}

    def order(self, epoch: int, seed: int) -> np.ndarray:
        """The epoch's row order: a seeded permutation of rows, or of groups with their rows together."""
        rng = np.random.default_rng([seed, epoch])
        if self.groups is None:
            return rng.permutation(len(self))
        groups = np.where(self.groups < 0, -1 - np.arange(len(self)), self.groups)  # -1: a group of its own
        unique, inverse = np.unique(groups, return_inverse=True)
        rank = rng.permutation(len(unique))[inverse]
        return np.lexsort((rng.random(len(self)), rank))


def _take(arrays: list[np.ndarray], offsets: np.ndarray) -> np.ndarray:
    """Row `offsets[i]` of `arrays[i]`, stacked."""
    picked = [a[int(i)] for a, i in zip(arrays, offsets, strict=True)]
    if arrays and arrays[0].dtype == object:
        return _object_array(picked)
    return np.stack(picked)


def _numpy_block(block, columns: list[str], group_column: str | None):  # a Ray block
    """A Ray block as `{column: ndarray}` (what `Dataset.to_numpy_refs` makes of it), its row count and its group
    column (None without one)."""
    from ray.data.block import BlockAccessor

    accessor = BlockAccessor.for_block(block)
    arrays = accessor.to_numpy(list(columns))
    return arrays, accessor.num_rows(), (arrays[group_column] if group_column is not None else None)
