"""KonIQ-10k: `koniq10k_distributions_sets.csv` (MOS 0-100, the official `set`) and its image folder."""

from __future__ import annotations

import pandas as pd

from dpiqa.engine.datasets.base import (
    LabeledImage,
    LabeledSet,
    check_images_exist,
    find_image_dir,
    open_file,
    require_columns,
    to_mos,
    to_name,
)
from dpiqa.storage import join

LABELS = "koniq10k_distributions_sets.csv"
RESOLUTIONS = ("1024x768", "512x384")
MOS_SCALE = 100.0
EXTRA = ("c1", "c2", "c3", "c4", "c5", "c_total", "SD", "MOS_zscore", "set")


def load(
    root: str,
    resolution: str | None = None,
    check_images: bool = True,
    storage_options: dict | None = None,
) -> LabeledSet:
    """Read KonIQ-10k (10,073 images) in its published layout.

    Args:
        root: the folder (local or fsspec URL) holding `koniq10k_distributions_sets.csv` and an image
            folder `1024x768/` or `512x384/`.
        resolution: which release's images to use, `1024x768` or `512x384`; None picks the first that
            exists, in that order.
        check_images: list the image folder once and fail if any labelled image is missing.
        storage_options: fsspec options for `root`.
    """
    source = join(root, LABELS)
    df = pd.read_csv(open_file(root, LABELS, "KonIQ-10k", storage_options))
    require_columns(df, ["image_name", "MOS"], source)
    if resolution is not None and resolution not in RESOLUTIONS:
        raise ValueError(f"KonIQ-10k resolution {resolution!r}: expected one of {', '.join(RESOLUTIONS)}")
    image_dir = find_image_dir(root, [resolution] if resolution else RESOLUTIONS, "KonIQ-10k", storage_options)
    extra = [c for c in EXTRA if c in df.columns]
    items = []
    for line, row in enumerate(df.to_dict("records"), start=2):
        name = to_name(row["image_name"], source, f"line {line}")
        items.append(
            LabeledImage(
                join(image_dir, name),
                to_mos(row["MOS"], source, f"line {line}"),
                name,
                extra={c: row[c] for c in extra},
            )
        )
    if check_images:
        check_images_exist(items, source, storage_options)
    return LabeledSet("koniq", root, items, MOS_SCALE)
