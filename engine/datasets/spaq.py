"""SPAQ: `MOS and Image attribute scores.xlsx` (first column the image name, then MOS) and `TestImage/`."""

from __future__ import annotations

import zipfile

import pandas as pd

from dpiqa.engine.datasets.base import (
    LabeledImage,
    LabeledSet,
    LayoutError,
    check_images_exist,
    open_file,
    to_mos,
    to_name,
)
from dpiqa.storage import join

LABELS = "MOS and Image attribute scores.xlsx"
IMAGE_DIR = "TestImage"
MOS_SCALE = 100.0
ATTRIBUTES = ("Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness")


def load(root: str, check_images: bool = True, storage_options: dict | None = None) -> LabeledSet:
    """Read SPAQ (11,125 smartphone photographs) in its published layout.

    Args:
        root: the folder (local or fsspec URL) holding the spreadsheet and `TestImage/`.
        check_images: list the image folder once and fail if any labelled image is missing.
        storage_options: fsspec options for `root`.
    """
    source = join(root, LABELS)
    data = open_file(root, LABELS, "SPAQ", storage_options)
    try:
        df = pd.read_excel(data, engine="openpyxl")
    except (zipfile.BadZipFile, ValueError, KeyError) as exc:
        raise LayoutError(f"{source}: not a readable .xlsx spreadsheet ({exc})") from None
    if df.shape[1] < 2:
        raise LayoutError(f"{source}: expected the image name and a MOS column, found {list(df.columns)}")
    mos_column = next((c for c in df.columns if str(c).strip().lower() == "mos"), None)
    if mos_column is None:
        raise LayoutError(f"{source}: missing column 'MOS' (has {', '.join(map(str, df.columns))})")
    name_column = df.columns[0]
    extra = [c for c in df.columns if str(c) in ATTRIBUTES]
    image_dir = join(root, IMAGE_DIR)
    items = []
    for line, row in enumerate(df.to_dict("records"), start=2):
        name = to_name(row[name_column], source, f"row {line}")
        items.append(
            LabeledImage(
                join(image_dir, name),
                to_mos(row[mos_column], source, f"row {line}"),
                name,
                extra={str(c): row[c] for c in extra},
            )
        )
    if check_images:
        check_images_exist(items, source, storage_options)
    return LabeledSet("spaq", root, items, MOS_SCALE)
