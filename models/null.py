"""The null scorer: constant scores (and zero quality maps) at no cost, so that a benchmark measures the
engine alone (`dpiqa score --model null`; `bench/scale.py`)."""

from __future__ import annotations

import numpy as np

NULL_SCORE = 50.0
NULL_MAP_SHAPE = (8, 64, 64)  # the teacher's quality map: 64 KiB per image in float16


class NullScorer:
    """Scores every image `NULL_SCORE`; its map is zeros of the teacher's shape (float16)."""

    name = "null"
    mos_scale = 100.0
    map_shape = NULL_MAP_SHAPE

    def __init__(self) -> None:
        from dpiqa.models.preprocessing import Preprocessing

        self.preprocessing = Preprocessing(size=(32, 32), interpolation="bilinear")

    def __call__(
        self, images: np.ndarray, return_map: bool = False, statistics: np.ndarray | None = None
    ):  # models.scorer.ScoreOutput; reads no statistics
        from dpiqa.models.scorer import ScoreOutput

        n = len(images)
        maps = np.zeros((n, *NULL_MAP_SHAPE), dtype=np.float16) if return_map else None
        return ScoreOutput(np.full(n, NULL_SCORE, dtype=np.float32), maps)
