"""The onnxruntime scorer: an exported student (`dpiqa export`) on the CPU, with the interface of `Scorer`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from dpiqa.models import checkpoint
from dpiqa.models.preprocessing import Preprocessing
from dpiqa.models.scorer import ScoreOutput
from dpiqa.models.student import StudentConfig

log = logging.getLogger(__name__)

INPUT_NAME = "images"
STATISTICS_NAME = "statistics"  # the second input of a student that reads statistics measured before the resize
OUTPUT_NAMES = ("score", "map")


def make_session(path: str | Path, threads: int | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session with all graph optimisations and a bounded thread pool.

    Args:
        path: the `.onnx` file.
        threads: intra-op threads; default: torch's thread count in this process, which is the budget
            the engine gave this worker (`--threads`, or Ray's `OMP_NUM_THREADS` for an actor). onnxruntime's
            own default (every physical core) would oversubscribe a node running several actors.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only; onnxruntime warns about every unused initializer
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxScorer:
    """Scores batches of uint8 images with an ONNX export of a student (see `models/export.py`).

    The graph takes uint8 `(B, H, W, 3)` pixels at the preprocessing size and does the value-range
    scaling and NCHW transpose itself, so `__call__` hands the decoded images over unchanged. Its
    `score` output is already in MOS units.

    Args:
        location: an export folder or fsspec URL (`config.json`, `model.onnx`, `card.json`).
        threads: intra-op threads (see `make_session`).
        verify: check the content hash of `config.json` + `model.onnx` against the card.
    """

    runtime = "onnx"

    def __init__(self, location: str, threads: int | None = None, verify: bool = True) -> None:
        directory = checkpoint.local_dir(location, files=checkpoint.ONNX_FILES)
        card_path = directory / checkpoint.CARD_NAME
        card = json.loads(card_path.read_text()) if card_path.exists() else {}
        if card.get("format") != "onnx" or not (directory / checkpoint.ONNX_NAME).exists():
            raise ValueError(
                f'{location}: not an ONNX export (no model.onnx, or card.json lacks "format": "onnx"); '
                "create one with `dpiqa export`"
            )
        if verify:
            actual = checkpoint.content_hash(directory, (checkpoint.CONFIG_NAME, checkpoint.ONNX_NAME))
            if card.get("sha256") != actual:
                raise ValueError(f"{location}: content hash {actual} does not match card.json ({card.get('sha256')})")
        config_data = json.loads((directory / checkpoint.CONFIG_NAME).read_text())
        config = checkpoint.config_from_dict(StudentConfig, config_data)
        self.card = card
        self.preprocessing: Preprocessing = config.preprocessing
        self.mos_scale = float(config.mos_scale)
        self.device = torch.device("cpu")
        self.precision = "fp32"
        self.session = make_session(directory / checkpoint.ONNX_NAME, threads)
        batch = self.session.get_inputs()[0].shape[0]
        # A --no-dynamic-batch export accepts exactly its batch size; other batches are run in chunks of it.
        self.fixed_batch: int | None = batch if isinstance(batch, int) else None

    def _feed(self, images: np.ndarray, statistics: np.ndarray | None) -> dict[str, np.ndarray]:
        return {INPUT_NAME: images, **({STATISTICS_NAME: statistics} if self.preprocessing.statistics else {})}

    def _run(self, images: np.ndarray, statistics: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if self.fixed_batch is None:
            score, quality_map = self.session.run(list(OUTPUT_NAMES), self._feed(images, statistics))
            return score, quality_map
        n, size = len(images), self.fixed_batch
        scores, maps = [], []
        for start in range(0, n, size):
            chunk = images[start : start + size]
            measured = None if statistics is None else statistics[start : start + size]
            pad = size - len(chunk)
            if pad:  # the last chunk is padded by repeating its last image; the padded outputs are dropped
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
                if measured is not None:
                    measured = np.concatenate([measured, np.repeat(measured[-1:], pad, axis=0)])
            score, quality_map = self.session.run(list(OUTPUT_NAMES), self._feed(chunk, measured))
            scores.append(score[: size - pad])
            maps.append(quality_map[: size - pad])
        return np.concatenate(scores), np.concatenate(maps)

    def __call__(
        self,
        images: np.ndarray | torch.Tensor,
        return_map: bool = False,
        statistics: np.ndarray | torch.Tensor | None = None,
    ) -> ScoreOutput:
        """Score uint8 `(B, H, W, 3)` images already resized to `preprocessing.size`; `statistics` as `Scorer`'s."""
        if len(images) == 0:
            return ScoreOutput.empty(return_map)
        images = np.ascontiguousarray(images.numpy() if isinstance(images, torch.Tensor) else images)
        expected = (*self.preprocessing.size, 3)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(
                f"ONNX scorer: expected uint8 images (B, {expected[0]}, {expected[1]}, 3), "
                f"got {images.dtype} {images.shape}"
            )
        if statistics is not None:
            statistics = np.ascontiguousarray(
                statistics.cpu().numpy() if isinstance(statistics, torch.Tensor) else statistics, dtype=np.float32
            )
        width = self.preprocessing.statistics_width
        if width and (statistics is None or statistics.shape != (len(images), width)):
            got = "none" if statistics is None else statistics.shape
            raise ValueError(f"ONNX scorer: expected statistics ({len(images)}, {width}), got {got}")
        score, quality_map = self._run(images, statistics)
        maps = quality_map.astype(np.float16) if return_map else None
        return ScoreOutput(score.astype(np.float32), maps)
