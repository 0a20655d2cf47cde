"""AGIQA-3K: `data.csv` (name, prompt, ..., mos_quality, std_quality, mos_align, std_align) and `images/`."""

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
from dpiqa.storage import join

LABELS = "data.csv"
IMAGE_DIR = "images"
MOS_SCALE = 5.0
SCORES = ("mos_quality", "mos_align")
EXTRA = ("adj1", "adj2", "style", "mos_quality", "std_quality", "mos_align", "std_align")


def load(
    root: str,
    score: str = "mos_quality",
    check_images: bool = True,
    storage_options: dict | None = None,
) -> LabeledSet:
    """Read AGIQA-3K (2,982 AI-generated images) in its published layout.

    Each image's group is its prompt: the same prompt was rendered by several generators, so a split
    that must not leak content between train and test groups by it (`dpiqa.engine.splits`, `group=True`).

    Args:
        root: the folder (local or fsspec URL) holding `data.csv` and `images/`.
        score: which human score is the label: `mos_quality` (perceptual quality, the default) or
            `mos_align` (text-image alignment); both are on about 0-5.
        check_images: list the image folder once and fail if any labelled image is missing.
        storage_options: fsspec options for `root`.
    """
    if score not in SCORES:
        raise ValueError(f"AGIQA-3K score {score!r}: expected one of {', '.join(SCORES)}")
    source = join(root, LABELS)
    df = pd.read_csv(
        open_file(root, LABELS, "AGIQA-3K", storage_options),
        keep_default_na=False,
        na_values={score: ["", "nan", "NaN"]},
    )
    require_columns(df, ["name", "prompt", score], source)
    image_dir = join(root, IMAGE_DIR)
    extra = [c for c in EXTRA if c in df.columns and c != score]
    items = []
    for line, row in enumerate(df.to_dict("records"), start=2):
        name = to_name(row["name"], source, f"line {line}")
        items.append(
            LabeledImage(
                join(image_dir, name),
                to_mos(row[score], source, f"line {line}"),
                name,
                group=str(row["prompt"]),
                extra={c: row[c] for c in extra},
            )
        )
    if check_images:
        check_images_exist(items, source, storage_options)
    return LabeledSet("agiqa3k", root, items, MOS_SCALE)
