"""BRISQUE, the classical no-reference baseline: the `brisque` package's LIVE-trained SVR, run offline."""

from __future__ import annotations

import functools
import io
import logging
import time
from collections.abc import Iterable

import numpy as np
from PIL import Image

from dpiqa.images import as_rgb_image
from dpiqa.storage import get_fs

log = logging.getLogger(__name__)

# BRISQUE scores fall as quality rises (about 0 = pristine .. 100 = heavily distorted on LIVE; values
# outside that range occur). `brisque_quality` turns them around so that higher is better, like MOS.
QUALITY_OFFSET = 100.0

ImageInput = np.ndarray | Image.Image | str


@functools.cache
def brisque_model():  # a brisque.BRISQUE subclass, imported lazily (it pulls in cv2, libsvm)
    """The `brisque` package's scorer (its LIVE-trained SVR), patched for numpy 2, loaded once."""
    from brisque import BRISQUE

    class _Numpy2Brisque(BRISQUE):
        """brisque 0.2.0 with its features flattened to scalars.

        On numpy 2 the package fails in `scale_features` ("only 0-dimensional arrays can be converted to
        Python scalars"): its variance features come out as 1-element arrays (`mean_squares_sum`
        divides by a shape tuple) and `float()` no longer accepts those. We flatten each feature to a
        float64 scalar here, in our subclass, without touching the installed package; the score is
        otherwise the package's own (its SVR and scaling from `svm.txt` and `normalize.pickle`).
        """

        def calculate_brisque_features(
            self, image: np.ndarray, kernel_size: int = 7, sigma: float = 7 / 6
        ) -> np.ndarray:
            features = super().calculate_brisque_features(image, kernel_size=kernel_size, sigma=sigma)
            flat = [np.asarray(f, dtype=np.float64).reshape(-1) for f in features]
            if any(f.size != 1 for f in flat):
                raise RuntimeError(f"BRISQUE feature sizes {[f.size for f in flat]}: expected scalars")
            return np.array([f[0] for f in flat], dtype=np.float64)

        # Speed, not a different score: the package's `score` computes the full-size MSCN coefficients and their
        # pair products first and then discards them (its `calculate_brisque_features` computes them again);
        # ours leaves that pass out, with every other step the package's, in its order (the same floats: a
        # reordered blur changes scores by up to 5 units where flat regions give coefficients of exactly 0,
        # which BRISQUE's asymmetric fit splits at `z < 0`).
        def score(self, img) -> float:  # as the package's
            import cv2
            import skimage.color

            gray = skimage.color.rgb2gray(self.remove_alpha_channel(self.load_image(img)))
            half = cv2.resize(gray, None, fx=1 / 2, fy=1 / 2, interpolation=cv2.INTER_CUBIC)
            features = np.concatenate(
                [self.calculate_brisque_features(im, kernel_size=7, sigma=7 / 6) for im in (gray, half)]
            )
            return self.calculate_image_quality_score(features)

    return _Numpy2Brisque(url=False)


def _load(image: ImageInput, storage_options: dict | None) -> np.ndarray:
    if isinstance(image, str):
        fs, path = get_fs(image, storage_options)
        with fs.open(path, "rb") as f:
            image = Image.open(io.BytesIO(f.read()))
    return np.asarray(as_rgb_image(image))


def brisque_score(image: ImageInput, storage_options: dict | None = None) -> float:
    """The BRISQUE score of one image (lower = better quality), NaN where BRISQUE is undefined.

    BRISQUE normalises by local contrast, so an image without any (a flat colour: AGIQA-3K has three
    all-black images) has no features (0 / 0); it gets NaN and a warning rather than an arbitrary number,
    and the evaluation decides what a baseline's undefined score counts as.

    Args:
        image: an RGB/grey uint8 array, a PIL image, or a path/fsspec URL of an image file.
        storage_options: fsspec options when `image` is a URL.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        score = float(brisque_model().score(_load(image, storage_options)))
    if not np.isfinite(score):
        what = image if isinstance(image, str) else "an image"
        log.warning("BRISQUE is undefined for %s (no local contrast, e.g. a flat colour): NaN", what)
        return float("nan")
    return score


def brisque_scores(images: Iterable[ImageInput], storage_options: dict | None = None) -> np.ndarray:
    """BRISQUE scores of many images, in order (lower = better quality, NaN where undefined; about
    bench/brisque_speed.py measures it; progress logged every 10 s).

    Args:
        images: uint8 arrays, PIL images, or paths/fsspec URLs.
        storage_options: fsspec options for URLs.
    """
    scores = []
    start = last = time.monotonic()
    for image in images:
        scores.append(brisque_score(image, storage_options))
        now = time.monotonic()
        if now - last >= 10.0:
            last = now
            log.info("brisque: %d images, %.1f images/s", len(scores), len(scores) / (now - start))
    return np.asarray(scores, dtype=np.float64)


def brisque_quality(images: Iterable[ImageInput], storage_options: dict | None = None) -> np.ndarray:
    """A quality-oriented BRISQUE: `100 - brisque_scores(images)`, so that higher = better, like MOS.

    Correlations with MOS then have the usual sign; the logistic fit of `dpiqa.engine.metrics` maps it to
    MOS units before PLCC and RMSE.

    Args:
        images: uint8 arrays, PIL images, or paths/fsspec URLs.
        storage_options: fsspec options for URLs.
    """
    return QUALITY_OFFSET - brisque_scores(images, storage_options)


class BrisqueScorer:
    """BRISQUE behind the scoring interface (`dpiqa.models.load_scorer("brisque")`), so the engine, `dpiqa eval`
    and the reports run the baseline on exactly the images and splits the models see.

    Images are resized to 512 x 512 like the models' input (AGIQA-3K's images already are); the score is
    `100 - BRISQUE` (higher = better). BRISQUE has no quality map. A flat image, where BRISQUE is
    undefined, scores NaN, which the engine records as a `score_error` row and `evaluate` leaves out.
    """

    name = "brisque"
    preprocessing = None  # set below: a module-level Preprocessing would import torch at import time
    mos_scale = 100.0

    def __init__(self) -> None:
        from dpiqa.models.preprocessing import Preprocessing

        self.preprocessing = Preprocessing(size=(512, 512), interpolation="bilinear")

    def __call__(
        self, images: np.ndarray, return_map: bool = False, statistics: np.ndarray | None = None
    ):  # models.scorer.ScoreOutput; reads no statistics
        from dpiqa.models.scorer import ScoreOutput

        if return_map:
            raise ValueError("BRISQUE has no quality map: score without --write-maps")
        return ScoreOutput(brisque_quality(list(np.asarray(images))).astype(np.float32))
