"""The library API behind `dpiqa.load_scorer`: images (paths, URLs, bytes, PIL images, arrays) in, scores in the
model's MOS units out, decoded and scored by the engine's own `DecodeStage` and `ScoreStage`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from dpiqa import storage
from dpiqa.engine import schema
from dpiqa.engine.stages.decode import DEFAULT_MAX_PIXELS, DecodeStage
from dpiqa.engine.stages.score import ScoreStage
from dpiqa.errors import UsageError
from dpiqa.models.run_options import RunOptions

# What one image may be. A list or tuple of them, or a uint8 array (B, H, W, 3), is a batch.
ImageLike = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray | None
ERRORS = ("raise", "status")


class ImageError(ValueError):
    """An image that cannot be scored (`errors="raise"`). The message names the image and says what is wrong.

    Attributes:
        status: the row status `dpiqa score` writes for such an image (`empty_file`, `not_an_image`,
            `decode_error`, `too_large`, `no_image`, `score_error`).
        index: the image's position in the call's input.
    """

    def __init__(self, message: str, status: str, index: int) -> None:
        super().__init__(message)
        self.status = status
        self.index = index


@dataclass(frozen=True)
class Scores:
    """What `QualityScorer.score` returns: one entry per image, in input order (the columns of `dpiqa score`'s rows).

    Attributes:
        score: float32 `(n,)`, the model's MOS units (higher is better); NaN where `status` is not `ok`.
        status: `(n,)` str: `ok` or the row status `dpiqa score` would write (its README's table of bad input).
        error: `(n,)` str or None: what went wrong, naming the image; None where `ok`.
        width, height: int32 `(n,)`: the size as displayed (EXIF orientation applied); -1 where unknown.
        map: float16 `(n, *map_shape)` quality maps with `return_map=True` (NaN where not `ok`), else None.
    """

    score: np.ndarray
    status: np.ndarray
    error: np.ndarray
    width: np.ndarray
    height: np.ndarray
    map: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.score)

    @property
    def ok(self) -> np.ndarray:
        """bool `(n,)`: the images that were scored."""
        return self.status == schema.OK


class QualityScorer:
    """A model loaded once, scoring images as `dpiqa score` does (made by `load_scorer`).

    `scorer(images)` gives the scores alone and raises `ImageError` on a bad image; `scorer.score(images, ...)`
    gives every column, with `errors="status"` for a status per image instead of the error.

    Attributes:
        model: the name or path it was loaded from.
        device: where it runs (`cpu`, `cuda`, ...).
        mos_scale: the top of its MOS scale (scores run from about 0 to it; `demo`: 5, `brisque`: 100).
        map_shape: the shape of one quality map (`()` for a model without one, such as `brisque`).
    """

    lower_better = False  # as pyiqa's metrics say it: a higher score is a better image

    def __init__(
        self,
        model: str,
        options: RunOptions,
        batch_size: int,
        max_pixels: int,
        storage_options: dict | None,
    ) -> None:
        from dpiqa import models

        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, not {batch_size}")
        info = models.describe(model)
        models.check_runtime(model, info.runtime, options)
        self.model = model
        self.batch_size = batch_size
        self.storage_options = storage_options
        self.map_shape = tuple(info.map_shape)
        self.mos_scale = float(info.mos_scale)
        # The engine's two batch stages, as `dpiqa score` builds them (engine/pipeline.py's build_stages): one
        # loaded model, shared by a second score stage that also returns the quality maps.
        self._decode = DecodeStage(info.preprocessing, max_pixels=max_pixels)
        self._score = ScoreStage(model, options, batch_size=batch_size)
        self._score.setup()
        self._score_maps = ScoreStage(model, options, batch_size=batch_size, write_maps=True)
        self._score_maps.scorer = self._score.scorer
        self.device = str(getattr(self._score.scorer, "device", "cpu"))

    def __repr__(self) -> str:
        return f"QualityScorer({self.model!r}, device={self.device!r})"

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> float | np.ndarray:
        """Scores in the model's MOS units: a float for one image, float32 `(n,)` for a list (or a `(B, H, W, 3)`
        array).

        Raises:
            ImageError: an image that cannot be scored (the first one, naming it).
            OSError: a path or URL that cannot be read.
        """
        single, _ = _as_list(images)
        scores = self.score(images).score
        return float(scores[0]) if single else scores

    def score(self, images: ImageLike | Sequence[ImageLike], errors: str = "raise", return_map: bool = False) -> Scores:
        """Score images in batches of `batch_size`; every column of `dpiqa score`'s rows, one entry per image.

        Args:
            images: a path or URL (fsspec: local, `s3://`, `https://`, ... with the scorer's `storage_options`),
                image bytes, a PIL image, a uint8 array `(H, W)`, `(H, W, 3)`, `(H, W, 4)` (or uint16 `(H, W)`),
                or a list of them, or a uint8 array `(B, H, W, 3)`.
            errors: `raise` (an `ImageError` for the first image that cannot be scored) or `status` (a row status
                for it, as `dpiqa score` writes, and the others scored).
            return_map: also return each image's quality map.

        Raises:
            ImageError: with `errors="raise"`, an image that cannot be scored.
            OSError: a path or URL that cannot be read (whatever `errors` says: that is no image's fault).
        """
        if errors not in ERRORS:
            raise UsageError(f"errors must be 'raise' or 'status', not {errors!r}")
        if return_map and not self.map_shape:
            raise UsageError(f"{self.model} has no quality map")
        _, items = _as_list(images)
        parts = []
        for start in range(0, len(items), self.batch_size):
            part = self._score_items(items[start : start + self.batch_size], start, return_map)
            if errors == "raise" and not part.ok.all():
                row = int(np.flatnonzero(~part.ok)[0])
                raise ImageError(str(part.error[row]), str(part.status[row]), start + row)
            parts.append(part)
        if not parts:
            return self.score_column(np.empty(0, dtype=object), [], return_map)
        return Scores(
            *(
                np.concatenate([getattr(p, name) for p in parts])
                for name in ("score", "status", "error", "width", "height")
            ),
            map=np.concatenate([p.map for p in parts]) if return_map else None,
        )

    def _score_items(self, items: Sequence[Any], start: int, return_map: bool) -> Scores:
        data = np.empty(len(items), dtype=object)
        labels = []
        for i, item in enumerate(items):
            if isinstance(item, (str, os.PathLike)):
                url = os.fspath(item)
                fs, path = storage.get_fs(url, self.storage_options)
                data[i] = storage.retry(lambda fs=fs, path=path: fs.cat_file(path), f"read {url}")
                labels.append(url)
            elif item is None or isinstance(item, (bytes, bytearray, memoryview, Image.Image, np.ndarray)):
                data[i] = bytes(item) if isinstance(item, (bytearray, memoryview)) else item
                labels.append(f"image {start + i}")
            else:
                raise TypeError(
                    f"image {start + i}: a {type(item).__name__} is no image; pass a path, URL, bytes, a PIL image "
                    "or a numpy array (or a list of them)"
                )
        out = self.score_column(data, labels, return_map)
        for i in np.flatnonzero(out.status == schema.SCORE_ERROR):  # a row's error names no image here: name it
            out.error[i] = f"{labels[i]}: {out.error[i]}"
        return out

    def score_column(self, data: np.ndarray, labels: Sequence[str], return_map: bool = False) -> Scores:
        """One batch through the engine's decode and score stages (the code path of `dpiqa score` and of the
        `dpiqa.ray` transform).

        Args:
            data: `(n,)` entries of image bytes, PIL images, arrays or None (no image: a `no_image` row), or a
                uint8 array `(n, H, W, C)`.
            labels: what each entry's error message starts with (its path, or the column it came from).
            return_map: also return the quality maps.
        """
        n = len(data)
        status = np.full(n, schema.OK, dtype=object)
        error = np.full(n, None, dtype=object)
        if data.dtype == object:
            for i in [i for i, v in enumerate(data) if v is None]:
                status[i], error[i] = schema.NO_IMAGE, f"{labels[i]}: no image (None)"
        batch = {"index": np.arange(n), "data": data, "ext": np.asarray(labels, dtype=object), "status": status}
        batch["error"] = error
        out = (self._score_maps if return_map else self._score)(self._decode(batch))
        maps = None
        if return_map:
            maps = np.full((n, *self.map_shape), np.nan, dtype=np.float16)
            for i, blob in enumerate(out["map"]):
                if blob is not None:
                    maps[i] = np.frombuffer(blob, dtype=np.float16).reshape(self.map_shape)
        return Scores(out["score"], out["status"], out["error"], out["width"], out["height"], maps)


def _as_list(images: Any) -> tuple[bool, Sequence[Any]]:
    """`(single, items)`: one image as a list of one, a list or tuple as it is, a `(B, H, W, C)` array as B images."""
    if isinstance(images, (list, tuple)):
        return False, images
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return False, list(images)
    return True, [images]


def load_scorer(
    name_or_path: str = "demo",
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 32,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    storage_options: dict | None = None,
) -> QualityScorer:
    """Load a model to score images with, in this process.

    Args:
        name_or_path: what `dpiqa score --model` takes: `demo` (the shipped student), `brisque`, a checkpoint or
            ONNX export folder, an `s3://` (any fsspec) URL or a Hugging Face Hub id.
        device: `auto` (a GPU where this process sees one), `cpu`, `cuda`, `cuda:N`.
        precision: `auto` (bf16 on a GPU, fp32 on a CPU), `fp32`, `bf16` or `fp16`.
        batch_size: images per model call.
        max_pixels: larger images are `too_large` (decompression bombs), as in `dpiqa score --max-pixels`.
        storage_options: fsspec options for images given as URLs (`dpiqa score --storage-options`).

    Raises:
        ValueError: an option that cannot be (`dpiqa.errors.UsageError`), or a model that is no checkpoint.
        FileNotFoundError: a model folder or URL that does not exist.
    """
    options = RunOptions(device=device, precision=precision)
    return QualityScorer(name_or_path, options, batch_size, max_pixels, storage_options)
