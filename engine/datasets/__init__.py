"""Labelled image-quality datasets in their published layouts: the registry and `load_dataset`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dpiqa.engine.datasets import agiqa3k, clive, koniq, livefb, spaq, table, webdataset
from dpiqa.engine.datasets.base import LabeledImage, LabeledSet, LayoutError
from dpiqa.engine.datasets.webdataset import LabeledSample, LabeledShards


@dataclass(frozen=True)
class Layout:
    """A dataset layout: its loader and the top of its MOS scale.

    Args:
        load: `load(root, ..., storage_options=None)`, returning a `LabeledSet` (or, for shards, a
            streaming `LabeledShards`).
        mos_scale: the layout's MOS scale; None where the caller declares it (`mos_scale=` option).
        description: one line for `--help` texts.
    """

    load: Callable[..., Any]
    mos_scale: float | None
    description: str

    def options(self) -> list[str]:
        """The loader's keyword options (everything after `root`)."""
        return list(inspect.signature(self.load).parameters)[1:]


DATASETS: dict[str, Layout] = {
    "koniq": Layout(koniq.load, koniq.MOS_SCALE, "KonIQ-10k: koniq10k_distributions_sets.csv + 1024x768/"),
    "clive": Layout(clive.load, clive.MOS_SCALE, "CLIVE: Data/AllImages_release.mat, AllMOS_release.mat + Images/"),
    "spaq": Layout(spaq.load, spaq.MOS_SCALE, "SPAQ: MOS and Image attribute scores.xlsx + TestImage/"),
    "livefb": Layout(livefb.load, livefb.MOS_SCALE, "LIVE-FB (FLIVE): labels_image.csv + database/"),
    "agiqa3k": Layout(agiqa3k.load, agiqa3k.MOS_SCALE, "AGIQA-3K: data.csv + images/ (MOS 0-5, grouped by prompt)"),
    "csv": Layout(table.load, None, "a CSV or Parquet table of (path or URL, mos); ROOT is the table"),
    "webdataset": Layout(webdataset.load, None, "WebDataset shards with a score in .json; ROOT is the shard spec"),
}


def load_dataset(
    name: str, root: str, storage_options: dict | None = None, **options: Any
) -> LabeledSet | LabeledShards:
    """Load a dataset by its registry name.

    Args:
        name: a key of `DATASETS`.
        root: the dataset's root folder (local or fsspec URL); the table file for `csv`, the shard
            specification for `webdataset`.
        storage_options: fsspec options for `root` and the images.
        **options: the layout's own options (its loader's keyword arguments, e.g. `resolution` for
            `koniq`, `score_field` for `webdataset`); an unknown one is an error.

    Returns:
        A `LabeledSet`, or for `webdataset` a streaming `LabeledShards`.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    layout = DATASETS[name]
    known = layout.options()
    unknown = [k for k in options if k not in known or k == "storage_options"]
    if unknown:
        raise ValueError(f"dataset {name!r}: unknown option(s) {', '.join(unknown)} (options: {', '.join(known)})")
    return layout.load(root, storage_options=storage_options, **options)


__all__ = [
    "DATASETS",
    "LabeledImage",
    "LabeledSample",
    "LabeledSet",
    "LabeledShards",
    "Layout",
    "LayoutError",
    "load_dataset",
]
