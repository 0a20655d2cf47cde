"""The scoring interface the engine uses: a loaded model, its preprocessing, fast paths, MOS units."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from dpiqa.models.allocator import keep_freed_memory
from dpiqa.models.preprocessing import Preprocessing
from dpiqa.models.run_options import RunOptions

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ScoreOutput:
    """Scores in the model's MOS units `(B,)` float32 and, when asked for, quality maps float16."""

    scores: np.ndarray
    maps: np.ndarray | None = None

    @classmethod
    def empty(cls, return_map: bool = False) -> ScoreOutput:
        """The output for a batch of no images."""
        return cls(np.zeros(0, np.float32), np.zeros((0,), np.float16) if return_map else None)


class ImageScorer(Protocol):
    """What the engine calls: `Scorer` (torch) and `dpiqa.models.onnx_scorer.OnnxScorer` (onnxruntime) are one."""

    preprocessing: Preprocessing
    mos_scale: float

    def __call__(
        self, images: np.ndarray | torch.Tensor, return_map: bool = False, statistics: np.ndarray | None = None
    ) -> ScoreOutput: ...


def resolve_device(device: str) -> torch.device:
    """`auto` -> `cuda` where this process sees a GPU, else `cpu` (decided on the worker, not the driver)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 on a GPU, fp32 on a CPU (where bf16 autocast is slower on most CPUs)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
    return precision


class Scorer:
    """Scores batches of uint8 images with a DP-IQA model.

    Args:
        model: a teacher or student (`forward(x) -> (score, map)`, `config.preprocessing`, `config.mos_scale`).
        options: device, precision, channels_last and compile (`RunOptions`; its runtime is torch's here and
            its threads are the worker's business).
        prepare: call the model's `prepare_for_inference()` (the teacher's once-per-model prompt-context
            keys and values); off only to measure the plain path.
    """

    def __init__(
        self,
        model: nn.Module,
        options: RunOptions = RunOptions(),  # noqa: B008 - frozen, so one shared default is safe
        prepare: bool = True,
    ) -> None:
        self.device = resolve_device(options.device)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.precision = resolve_precision(options.precision, self.device)
        self.channels_last = options.channels_last
        model = model.to(self.device).eval()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        prepare_fn = getattr(model, "prepare_for_inference", None)
        if prepare and prepare_fn is not None:
            prepare_fn()
        self.model = model
        self._forward = torch.compile(model) if options.compile else model
        self.preprocessing: Preprocessing = model.config.preprocessing
        self.mos_scale = float(model.config.mos_scale)

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @torch.inference_mode()
    def __call__(
        self,
        images: np.ndarray | torch.Tensor,
        return_map: bool = False,
        statistics: np.ndarray | torch.Tensor | None = None,
    ) -> ScoreOutput:
        """Score uint8 `(B, H, W, 3)` images already resized to `preprocessing.size`; `statistics` float32
        `(B, k)`: those the model's preprocessing measures before the resize (the decoder's `statistics`)."""
        if len(images) == 0:
            return ScoreOutput.empty(return_map)
        if isinstance(images, np.ndarray) and not images.flags.writeable:
            images = images.copy()  # Ray hands out read-only views; torch wants writable memory
        pixels = torch.as_tensor(images).to(self.device, non_blocking=True)
        x = self.preprocessing.to_tensor(pixels)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if statistics is not None and self.preprocessing.statistics:  # only a model that reads them gets them
            if isinstance(statistics, np.ndarray):  # a copy: small, and Ray's views are read-only
                statistics = torch.from_numpy(np.array(statistics, dtype=np.float32))
            statistics = statistics.to(self.device, torch.float32)
        with self._autocast():
            score, quality_map = self._forward(x, **self.preprocessing.model_kwargs(statistics))
        scores = (score.float() * self.mos_scale).cpu().numpy()
        maps = quality_map.to(torch.float16).cpu().numpy() if return_map else None
        return ScoreOutput(scores, maps)
