"""WebDataset shards streamed into training, each sample with the teacher's outputs where given."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np

from dpiqa.engine.datasets import LabeledShards
from dpiqa.engine.stages.base import Batch
from dpiqa.engine.stages.decode import DecodeError, decode_image
from dpiqa.engine.training.data.labeled import input_columns, object_array
from dpiqa.engine.training.data.teacher import TeacherOutputs
from dpiqa.models.preprocessing import Preprocessing

log = logging.getLogger(__name__)


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
        "shard": object_array(list(shard)),
        "index": np.asarray(index, np.int64),
        "name": object_array(list(key)),
        "ext": object_array(list(ext)),
        "data": object_array(list(data)),
        "target": np.asarray(target, np.float32),
        "teacher_score": np.asarray(score, np.float32),
        "teacher_map": object_array(list(qmap)),
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
