"""The Ray Data transform behind `dpiqa.ray`: a quality score for an image column of any dataset, through the same
decode and score stages as `dpiqa score` (the library scorer's `score_column`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from dpiqa.engine.library import load_scorer
from dpiqa.engine.stages.decode import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    import ray.data


class Scorer:
    """A callable class for `ds.map_batches`: loads the model once per actor, reads an image column of bytes (any
    format `dpiqa score` decodes: `read_webdataset(..., decoder=None)`, `read_binary_files`), arrays (`read_images`)
    or PIL images, and adds `score` (float32, the model's MOS units; NaN where not `ok`), `status` (`ok` or
    `dpiqa score`'s row status; `no_image` for a null) and `error` (None where `ok`). Every other column passes
    through. A column of paths or URLs is refused: read the files first (`read_binary_files`, or a download step
    whose failures are rows of their own), so that one unreadable URL does not fail the task.

        ds.map_batches(dpiqa.ray.Scorer, fn_constructor_kwargs={"model": "demo", "column": "image"},
                       batch_size=32, concurrency=2, num_gpus=1)

    A bad image is a row status, never a failed task; a column that is missing, or a batch that already has the
    columns it would add, fails the task with a message saying so (use `prefix`).

    Args:
        model: what `dpiqa score --model` takes (`demo`, `brisque`, a checkpoint folder, URL or Hub id).
        column: the image column (`read_webdataset`: its extension, such as `jpg`).
        device: `auto` (the actor's GPU where it was given one), `cpu`, `cuda`.
        precision: `auto` (bf16 on a GPU, fp32 on a CPU), `fp32`, `bf16`, `fp16`.
        batch_size: images per model call.
        max_pixels: larger images are `too_large` rows.
        storage_options: fsspec options for a column of URLs.
        prefix: put before the new columns' names (`q_` gives `q_score`, `q_status`, `q_error`).
    """

    def __init__(
        self,
        model: str = "demo",
        column: str = "image",
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 32,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        storage_options: dict | None = None,
        prefix: str = "",
    ) -> None:
        self.column = column
        self.names = (f"{prefix}score", f"{prefix}status", f"{prefix}error")
        self.scorer = load_scorer(
            model,
            device=device,
            precision=precision,
            batch_size=batch_size,
            max_pixels=max_pixels,
            storage_options=storage_options,
        )

    def __call__(self, batch: Any) -> Any:
        """A batch in Ray Data's numpy format (`dict[str, np.ndarray]`) or a pandas DataFrame, with the three
        columns added."""
        columns = list(batch.keys()) if isinstance(batch, dict) else list(batch.columns)
        if self.column not in columns:
            raise ValueError(f"dpiqa.ray.Scorer: no column {self.column!r} in the batch (columns: {columns})")
        taken = [name for name in self.names if name in columns]
        if taken:
            raise ValueError(
                f"dpiqa.ray.Scorer: the batch already has column(s) {taken}; pass prefix= to name the new ones"
            )
        values = batch[self.column]
        if not isinstance(values, np.ndarray):  # a pandas column
            values = values.to_numpy()
        if values.dtype.kind in "US":  # a fixed-width text column (numpy's str dtypes)
            values = values.astype(object)
        if values.dtype != object and values.ndim != 4:  # a column of one image per row is 4-D or object
            raise ValueError(
                f"dpiqa.ray.Scorer: column {self.column!r} holds {values.dtype} {values.shape[1:]} per row, "
                "not images (bytes, or uint8 arrays)"
            )
        if values.dtype.kind in "OUS" and any(isinstance(v, str) for v in values):
            raise ValueError(
                f"dpiqa.ray.Scorer: column {self.column!r} holds text (paths or URLs?), not images; read the files "
                "first (ray.data.read_binary_files, or read_webdataset(..., decoder=None))"
            )
        out = self.scorer.score_column(values, [self.column] * len(values))
        result = dict(batch) if isinstance(batch, dict) else batch.copy()  # the caller's batch stays as it was
        for name, value in zip(self.names, (out.score, out.status, out.error), strict=True):
            result[name] = value
        return result


def add_scores(
    ds: ray.data.Dataset,
    model: str = "demo",
    column: str = "image",
    concurrency: int | None = None,
    num_gpus: float | None = None,
    batch_size: int = 32,
    **options: Any,
) -> ray.data.Dataset:
    """`ds` with `score`, `status` and `error` columns from `Scorer`, on resources chosen as `dpiqa score` chooses
    them: one GPU per actor and one actor per GPU where the cluster has GPUs (and the model runs on torch), else
    one CPU actor.

    Args:
        ds: any dataset with an image column.
        model: what `dpiqa score --model` takes.
        column: the image column.
        concurrency: scoring actors (default: the cluster's GPUs, else 1).
        num_gpus: GPUs per actor (default: 1 where the cluster has GPUs, else 0).
        batch_size: rows per batch and images per model call.
        **options: `Scorer`'s other arguments (`device`, `precision`, `max_pixels`, `storage_options`, `prefix`).
    """
    import ray

    from dpiqa import models

    if not ray.is_initialized():
        ray.init()
    if num_gpus is None:
        gpus = ray.cluster_resources().get("GPU", 0)
        on_torch = models.runtime_of(model) == "torch"  # not a baseline (CPU only) or an ONNX export
        num_gpus = 1.0 if gpus > 0 and on_torch and options.get("device", "auto") != "cpu" else 0.0
    if concurrency is None:
        concurrency = max(1, int(ray.cluster_resources().get("GPU", 0))) if num_gpus else 1
    return ds.map_batches(
        Scorer,
        fn_constructor_kwargs={"model": model, "column": column, "batch_size": batch_size, **options},
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=concurrency,
        num_gpus=num_gpus,
    )
