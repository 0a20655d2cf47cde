"""The labelled-set types every dataset loader returns, and the layout checks they share."""

from __future__ import annotations

import io
import logging
import math
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dpiqa.storage import get_fs, join

log = logging.getLogger(__name__)


class LayoutError(ValueError):
    """A dataset folder that does not match its published layout (a missing file, column or image)."""


@dataclass(frozen=True)
class LabeledImage:
    """One labelled image.

    Args:
        path: where the image is: a local path or an fsspec URL (`s3://bucket/key.jpg`, `https://...`).
        mos: the mean opinion score in the dataset's own units (see `LabeledSet.mos_scale`).
        name: the image's id inside its dataset (unique there; splits are made over these).
        group: images that must stay on the same side of a split share a group (AGIQA-3K: the prompt).
        extra: the layout's other per-image fields (KonIQ's `SD` and `set`, AGIQA-3K's `mos_align`...).
    """

    path: str
    mos: float
    name: str
    group: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass
class LabeledSet:
    """A labelled dataset: its images in the layout's order and the scale of its MOS.

    Training regresses `mos / mos_scale` (the models' config field `mos_scale`), so a model trained on
    a 0-100 set and one trained on AGIQA-3K's 0-5 both learn targets of about [0, 1].

    Args:
        dataset: the registry name (`koniq`, `clive`, ...).
        root: the dataset root it was read from.
        items: the images.
        mos_scale: the top of the MOS scale (100 for KonIQ-10k, CLIVE, SPAQ, LIVE-FB; 5 for AGIQA-3K).
    """

    dataset: str
    root: str
    items: list[LabeledImage]
    mos_scale: float

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for item in self.items:
            if item.name in seen:
                raise LayoutError(f"{self.dataset} at {self.root}: image name {item.name!r} appears twice")
            seen.add(item.name)
        if self.items:
            mos = self.mos
            if mos.min() < 0 or mos.max() > self.mos_scale:
                log.warning(
                    "%s at %s: MOS from %g to %g lies outside [0, %g]; targets (MOS / mos_scale) leave [0, 1]",
                    self.dataset,
                    self.root,
                    mos.min(),
                    mos.max(),
                    self.mos_scale,
                )
            elif len(mos) >= 10 and mos.max() <= self.mos_scale / 10:
                log.warning(
                    "%s at %s: every MOS is at most %g, a tenth of the declared scale %g: is the label "
                    "file on another scale?",
                    self.dataset,
                    self.root,
                    mos.max(),
                    self.mos_scale,
                )

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[LabeledImage]:
        return iter(self.items)

    def __getitem__(self, index: int) -> LabeledImage:
        return self.items[index]

    @property
    def names(self) -> list[str]:
        return [item.name for item in self.items]

    @property
    def mos(self) -> np.ndarray:
        """The MOS of every image, float64, in the dataset's units."""
        return np.asarray([item.mos for item in self.items], dtype=np.float64)

    @property
    def targets(self) -> np.ndarray:
        """`mos / mos_scale`, the training target."""
        return self.mos / self.mos_scale

    @property
    def groups(self) -> list[str] | None:
        """The group of every image (an image without one is its own group), or None when none has one."""
        if all(item.group is None for item in self.items):
            return None
        return [item.group if item.group is not None else item.name for item in self.items]

    def to_pandas(self) -> pd.DataFrame:
        """One row per image: `path`, `mos`, `name`, `group`, then the layout's extra fields."""
        return pd.DataFrame(
            [{"path": i.path, "mos": i.mos, "name": i.name, "group": i.group, **i.extra} for i in self.items],
            columns=None if self.items else ["path", "mos", "name", "group"],
        )


# ---------------------------------------------------------------------------------------------
# Shared layout checks: each raises a one-line LayoutError naming the file and what is wrong.


def open_file(root: str, relative: str, layout: str, storage_options: dict | None = None) -> io.BytesIO:
    """Read `root/relative` whole (label files are small) or fail naming the file the layout needs.

    Args:
        root: the dataset root (local path or fsspec URL).
        relative: the file's path inside the root, as the layout names it.
        layout: the dataset, for the message (`KonIQ-10k`).
        storage_options: fsspec options for `root`.
    """
    return read_bytes(join(root, relative), f"a {layout} root has {relative}", storage_options)


def read_bytes(url: str, what: str, storage_options: dict | None = None) -> io.BytesIO:
    """Read a small file whole, or fail with `url: not found (what)`."""
    fs, path = get_fs(url, storage_options)
    if not fs.isfile(path):
        raise LayoutError(f"{url}: not found ({what})")
    with fs.open(path, "rb") as f:
        return io.BytesIO(f.read())


def require_columns(df: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    """Fail naming the file and the missing columns (and the ones it has)."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise LayoutError(
            f"{source}: missing column(s) {', '.join(map(repr, missing))} (has {', '.join(map(str, df.columns))})"
        )


def to_mos(value: Any, source: str, row: str) -> float:
    """A finite float MOS, or a LayoutError naming the file and the row."""
    try:
        mos = float(value)
    except (TypeError, ValueError):
        raise LayoutError(f"{source}: {row}: MOS {value!r} is not a number") from None
    if not math.isfinite(mos):
        raise LayoutError(f"{source}: {row}: MOS is missing or not finite ({value!r})")
    return mos


def find_image_dir(root: str, candidates: Sequence[str], what: str, storage_options: dict | None = None) -> str:
    """The first of `candidates` (folders below `root`) that exists, as a full location."""
    for candidate in candidates:
        location = join(root, candidate)
        fs, path = get_fs(location, storage_options)
        if fs.isdir(path):
            return location
    raise LayoutError(f"{root}: no image folder (a {what} root has one of: {', '.join(c + '/' for c in candidates)})")


def check_images_exist(items: Sequence[LabeledImage], source: str, storage_options: dict | None = None) -> None:
    """Fail when any labelled image is absent, listing each image folder once (cheap on S3 too).

    Args:
        items: the labelled images.
        source: the label file that lists them, for the message.
        storage_options: fsspec options for the image locations.
    """
    by_folder: dict[str, list[str]] = {}
    for item in items:
        by_folder.setdefault(posixpath.dirname(item.path.replace("\\", "/")), []).append(item.path)
    missing: list[str] = []
    for folder, paths in by_folder.items():
        fs, path = get_fs(folder, storage_options)
        fs.invalidate_cache(path)  # a listing cached earlier in this process may be stale
        try:
            present = {p.rstrip("/") for p in fs.ls(path, detail=False)}
        except FileNotFoundError:
            present = set()
        missing += [p for p in paths if fs._strip_protocol(p) not in present]
    if missing:
        raise LayoutError(
            f"{source}: {len(missing)} of the {len(items)} images it lists are missing (e.g. {missing[0]})"
        )


def to_name(value: Any, source: str, row: str) -> str:
    """An image name from a label table, or a LayoutError naming the file and the row."""
    name = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).strip()
    if not name:
        raise LayoutError(f"{source}: {row}: no image name")
    return name
