"""A generic label table: a CSV or Parquet file of (image path or URL, MOS), column names configurable."""

from __future__ import annotations

import posixpath

import pandas as pd
import pyarrow as pa

from dpiqa.engine.datasets.base import (
    LabeledImage,
    LabeledSet,
    LayoutError,
    check_images_exist,
    read_bytes,
    require_columns,
    to_mos,
    to_name,
)
from dpiqa.storage import join

PARQUET_SUFFIXES = (".parquet", ".pq")


def load(
    root: str,
    path_column: str = "path",
    mos_column: str = "mos",
    name_column: str | None = None,
    group_column: str | None = None,
    mos_scale: float = 100.0,
    image_root: str | None = None,
    check_images: bool = False,
    storage_options: dict | None = None,
) -> LabeledSet:
    """Read a label table.

    Args:
        root: the table file (local or fsspec URL): Parquet when it ends in `.parquet`/`.pq`, else CSV
            (tab-separated when it ends in `.tsv`).
        path_column: the column with each image's location: an absolute path or URL, or a path relative
            to `image_root`.
        mos_column: the column with the MOS.
        name_column: the column with a unique image id; None uses the path column as written.
        group_column: a column whose equal values must stay on one side of a split (optional).
        mos_scale: the top of the MOS scale (training regresses `mos / mos_scale`).
        image_root: the folder relative paths are under; None is the table's own folder.
        check_images: list each image folder once and fail if an image is missing (needs a listable
            filesystem: local, S3, GCS...; not plain HTTP).
        storage_options: fsspec options for the table and the images.
    """
    if mos_scale <= 0:
        raise ValueError(f"mos_scale must be positive, got {mos_scale}")
    folder = posixpath.dirname(root.replace("\\", "/").rstrip("/"))
    data = read_bytes(root, "the label table", storage_options)
    parquet = root.lower().endswith(PARQUET_SUFFIXES)
    try:
        if parquet:
            df = pd.read_parquet(data)
        else:
            df = pd.read_csv(data, sep="\t" if root.lower().endswith(".tsv") else ",")
    except (ValueError, pa.ArrowException, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise LayoutError(f"{root}: not a readable table ({exc})") from None
    wanted = [path_column, mos_column] + [c for c in (name_column, group_column) if c]
    require_columns(df, wanted, root)
    base = image_root if image_root is not None else (folder or ".")
    items = []
    for i, row in enumerate(df.to_dict("records")):
        where = f"row {i + 1}" if parquet else f"line {i + 2}"
        path = to_name(row[path_column], root, where)
        name = to_name(row[name_column], root, where) if name_column else path
        group = None
        if group_column:
            value = row[group_column]
            group = None if value is None or (isinstance(value, float) and value != value) else str(value)
        extra = {c: row[c] for c in df.columns if c not in wanted}
        items.append(LabeledImage(resolve_path(path, base), to_mos(row[mos_column], root, where), name, group, extra))
    if not items:
        raise LayoutError(f"{root}: no rows")
    if check_images:
        check_images_exist(items, root, storage_options)
    return LabeledSet("csv", root, items, float(mos_scale))


def resolve_path(path: str, base: str) -> str:
    """An absolute path or URL as is; a relative one below `base`."""
    if "://" in path or posixpath.isabs(path):
        return path
    return join(base, path)
