"""Labelled images on Ray Data: a labelled set's or a ranking table's rows decoded, with synthetic distortions."""

from __future__ import annotations

import hashlib
import io
import logging
import math

import numpy as np
from PIL import Image

from dpiqa.engine.datasets import LabeledSet
from dpiqa.engine.stages.base import Batch
from dpiqa.engine.stages.decode import DecodeError, decode_image, model_input
from dpiqa.images import to_rgb
from dpiqa.models.preprocessing import Preprocessing
from dpiqa.storage import get_fs, retry

log = logging.getLogger(__name__)


def object_array(values: list) -> np.ndarray:
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
        out["name"] = object_array(names)
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

    from dpiqa.engine.datasets.table import resolve_path
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
            "path": resolve_path(str(r["path"]), base),
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
