"""CLIVE (LIVE In the Wild Challenge): names and MOS in MATLAB files under `Data/`, images under `Images/`."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.io

from dpiqa.engine.datasets.base import (
    LabeledImage,
    LabeledSet,
    LayoutError,
    check_images_exist,
    open_file,
    to_mos,
)
from dpiqa.storage import join

NAMES_FILE = "Data/AllImages_release.mat"
MOS_FILE = "Data/AllMOS_release.mat"
IMAGE_DIR = "Images"
TRAINING_DIR = "Images/trainingImages"
N_TRAINING = 7  # the first 7 entries are the training images under Images/trainingImages/
MOS_SCALE = 100.0


def _read_mat(root: str, relative: str, storage_options: dict | None) -> tuple[np.ndarray, str]:
    source = join(root, relative)
    data = open_file(root, relative, "CLIVE", storage_options)
    try:
        mat = scipy.io.loadmat(data)
    except (scipy.io.matlab.MatReadError, ValueError, TypeError, OSError) as exc:
        raise LayoutError(f"{source}: not a readable MATLAB file ({exc})") from None
    variable = relative.rsplit("/", 1)[-1].removesuffix(".mat")  # each file holds one variable of its name
    if variable not in mat:
        found = ", ".join(k for k in mat if not k.startswith("__")) or "none"
        raise LayoutError(f"{source}: no variable {variable!r} (has {found})")
    return mat[variable], source


def _cell_strings(cell: np.ndarray, source: str) -> list[str]:
    """A MATLAB cell array of strings (loadmat: an object array of 1-element string arrays) -> list."""
    if cell.dtype != object:
        raise LayoutError(f"{source}: expected a cell array of image names, found a {cell.dtype} array")

    def one(value: Any) -> str:
        flat = np.asarray(value).ravel()
        if flat.size != 1 or not isinstance(flat[0], str):
            raise LayoutError(f"{source}: cell {value!r} is not an image name")
        return str(flat[0])

    return [one(v) for v in cell.ravel()]


def load(
    root: str,
    drop_training: bool = True,
    check_images: bool = True,
    storage_options: dict | None = None,
) -> LabeledSet:
    """Read CLIVE in its published layout (`ChallengeDB_release`).

    Args:
        root: the folder (local or fsspec URL) holding `Data/` and `Images/`.
        drop_training: drop the first 7 entries, the training images under `Images/trainingImages/`,
            as the standard protocol does (1,162 images remain); False keeps all 1,169.
        check_images: list the image folder once and fail if any labelled image is missing.
        storage_options: fsspec options for `root`.
    """
    cell, names_source = _read_mat(root, NAMES_FILE, storage_options)
    names = _cell_strings(cell, names_source)
    mos_array, mos_source = _read_mat(root, MOS_FILE, storage_options)
    if not np.issubdtype(mos_array.dtype, np.number):
        raise LayoutError(f"{mos_source}: expected a numeric MOS array, found {mos_array.dtype}")
    mos = mos_array.ravel()
    if len(mos) != len(names):
        raise LayoutError(f"{mos_source}: {len(mos)} MOS values for the {len(names)} names in {names_source}")
    if len(names) <= N_TRAINING:
        raise LayoutError(f"{names_source}: only {len(names)} names (the first {N_TRAINING} are training images)")
    items = []
    for i, (name, value) in enumerate(zip(names, mos, strict=True)):
        training = i < N_TRAINING
        if training and drop_training:
            continue
        folder = TRAINING_DIR if training else IMAGE_DIR
        items.append(
            LabeledImage(
                join(root, folder, name),
                to_mos(value, mos_source, f"entry {i + 1} ({name})"),
                name,
                extra={"training_image": training},
            )
        )
    if check_images:
        check_images_exist(items, names_source, storage_options)
    return LabeledSet("clive", root, items, MOS_SCALE)
