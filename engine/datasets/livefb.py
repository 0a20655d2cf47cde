"""LIVE-FB (FLIVE, PaQ-2-PiQ): `labels_image.csv` (name, mos, ...) and the images, usually under `database/`."""

from __future__ import annotations

import pandas as pd

from dpiqa.engine.datasets.base import (
    LabeledImage,
    LabeledSet,
    check_images_exist,
    open_file,
    require_columns,
    to_mos,
    to_name,
)
from dpiqa.storage import get_fs, join

LABELS = "labels_image.csv"
IMAGE_DIRS = ("database", "")  # names are relative paths (`voc_emotic_ava/xxx.jpg`) below one of these
MOS_SCALE = 100.0


def load(
    root: str,
    image_dir: str | None = None,
    check_images: bool = True,
    storage_options: dict | None = None,
) -> LabeledSet:
    """Read LIVE-FB (about 39,800 images) in its published layout.

    Args:
        root: the folder (local or fsspec URL) holding `labels_image.csv`.
        image_dir: the folder below `root` that the `name` paths are relative to; None picks `database/`
            when it exists, else `root` itself (both layouts circulate).
        check_images: list the image folder once and fail if any labelled image is missing.
        storage_options: fsspec options for `root`.
    """
    source = join(root, LABELS)
    df = pd.read_csv(open_file(root, LABELS, "LIVE-FB", storage_options))
    require_columns(df, ["name", "mos"], source)
    if image_dir is None:
        fs, path = get_fs(join(root, IMAGE_DIRS[0]), storage_options)
        image_dir = IMAGE_DIRS[0] if fs.isdir(path) else ""
    images = join(root, image_dir) if image_dir else root
    extra = [c for c in df.columns if c not in ("name", "mos")]
    items = []
    for line, row in enumerate(df.to_dict("records"), start=2):
        name = to_name(row["name"], source, f"line {line}")
        items.append(
            LabeledImage(
                join(images, name), to_mos(row["mos"], source, f"line {line}"), name, extra={c: row[c] for c in extra}
            )
        )
    if check_images:
        check_images_exist(items, source, storage_options)
    return LabeledSet("livefb", root, items, MOS_SCALE)
