"""The scorer: an actor stage that loads a DP-IQA model once and scores the decoded images."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from dpiqa.engine import schema
from dpiqa.engine.stages.base import Batch, Stage, text_column
from dpiqa.engine.stages.device_decode import pixels_for
from dpiqa.models.run_options import RunOptions


class ScoreStage(Stage):
    """Adds a `score` column (MOS units; NaN where the row is no image) and optionally `map`.

    The constructor only stores settings; `setup()` loads the model on the worker, on its GPU when
    the actor was given one.

    Args:
        model: a named configuration, shipped name, checkpoint folder, URL or Hub id.
        options: how the model runs (`RunOptions`: device, precision, fast paths, runtime, and the torch
            threads of a CPU actor, which Ray would leave at one).
        batch_size: images per model call.
        num_gpus: GPUs per actor (1 on GPU clusters, 0 on CPUs).
        num_cpus: CPUs per actor.
        concurrency: number of actors.
        write_maps: also return the quality map of each image (float16 bytes).
        keep_images: pass the `image` column through (distillation trains on the images it scored).
    """

    name: ClassVar[str] = "score"

    def __init__(
        self,
        model: str,
        options: RunOptions = RunOptions(),  # noqa: B008 - frozen, so one shared default is safe
        batch_size: int = 32,
        num_gpus: float = 0.0,
        num_cpus: float = 1.0,
        concurrency: int = 1,
        write_maps: bool = False,
        keep_images: bool = False,
    ) -> None:
        self.model, self.options = model, options
        self.batch_size, self.num_gpus, self.num_cpus, self.concurrency = batch_size, num_gpus, num_cpus, concurrency
        self.write_maps = write_maps
        self.keep_images = keep_images
        self.scorer = None

    def setup(self) -> None:
        from dpiqa import models

        self.scorer = models.load_scorer(self.model, self.options)

    def __call__(self, batch: Batch) -> Batch:
        if self.scorer is None:
            self.setup()
        status = text_column(batch["status"])
        error = text_column(batch["error"])
        ok = status == schema.OK
        n = len(status)
        scores = np.full(n, np.nan, dtype=np.float32)
        maps = np.empty(n, dtype=object)
        for start in range(0, n, self.batch_size):
            rows = np.flatnonzero(ok[start : start + self.batch_size]) + start
            if len(rows) == 0:
                continue
            if "on_device" in batch and batch["on_device"][rows].any():
                pixels, statistics, failures = pixels_for(
                    batch["image"],
                    batch.get("statistics"),
                    batch["on_device"],
                    batch["jpeg"],
                    rows,
                    self.scorer.preprocessing,
                    self.scorer.device,
                )
                for row, exc in failures.items():
                    status[row], error[row] = exc.status, f"jpg: {exc}"
            else:
                pixels = batch["image"][rows]
                statistics = batch["statistics"][rows] if "statistics" in batch else None
            out = self.scorer(pixels, return_map=self.write_maps, statistics=statistics)
            scores[rows] = out.scores
            if self.write_maps:
                for j, row in enumerate(rows):
                    maps[row] = out.maps[j].tobytes()
        ok = status == schema.OK  # device decoding may have failed some rows after all
        bad = ok & ~np.isfinite(scores)
        status[bad] = schema.SCORE_ERROR
        error[bad] = "the model returned a non-finite score"
        scores[~ok | bad] = np.nan
        if self.write_maps:
            maps[~ok | bad] = None
        result = {
            k: v
            for k, v in batch.items()
            if k not in ("jpeg", "on_device") and (k not in ("image", "statistics") or self.keep_images)
        }
        result.update(status=status, error=error, score=scores)
        if self.write_maps:
            result["map"] = maps
        return result
