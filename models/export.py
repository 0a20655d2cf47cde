"""ONNX export of a student: one self-contained graph (uint8 pixels -> MOS score, map), checked vs PyTorch.

The exported folder is our checkpoint layout with `model.onnx` in place of the weights:

- `config.json`: the student's config, exactly as in its checkpoint (preprocessing, mos_scale, map size);
- `model.onnx`: input `images` uint8 `(batch, H, W, 3)` RGB at `preprocessing.size` (resized by the caller
  with `preprocessing.interpolation`, as the engine's decoder does); the graph applies
  `Preprocessing.to_tensor` (NCHW transpose, scaling to `value_range`) itself, so any runtime feeds decoded
  pixels and nothing about the input contract lives outside the file. Outputs `score` float32 `(batch,)` in
  MOS units (model output x mos_scale) and `map` float32 `(batch, 8, S, S)`.
- `card.json`: the checkpoint's card plus `"format": "onnx"`, `sha256` over config.json + model.onnx (the
  export's identity), `source.checkpoint_hash`, and an `onnx` section (file hash, opset, versions,
  input/output spec, the validation's measured differences and tolerance).

uint8 NHWC rather than float NCHW: the decoder produces uint8 HWC, so the runtime gets a quarter of the
bytes and the value range travels inside the graph instead of in every caller.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dpiqa import storage
from dpiqa.errors import UsageError
from dpiqa.models import checkpoint
from dpiqa.models.preprocessing import Preprocessing

log = logging.getLogger(__name__)

FORMATS = ("onnx",)
# Opset 18 is the oldest the torch.export-based exporter writes natively, and runs on onnxruntime >= 1.14
# and TensorRT >= 8.6.
DEFAULT_OPSET = 18
EXPORTABLE = ("dpiqa-student",)

# Validation tolerance, ONNX vs PyTorch, both fp32 on the CPU. Only the order of floating-point sums
# differs (other conv/GEMM kernels): measured at most 2.2e-6 MOS on the score (mos_scale 100) and 2.1e-6
# on the map, for random-weight students of every speed tier up to EfficientNet-B7 at 512
# (bench/results/latency-cpu.md). The bounds leave 50-500x headroom for trained weights (larger
# activations), while the score bound is 1000x below one MOS point on a 0-100 scale and the map bound is
# below the float16 step the engine stores maps in (2.4e-4 at 0.25).
SCORE_TOLERANCE = 1e-5  # max |score_onnx - score_torch| / mos_scale (1e-3 MOS points at mos_scale 100)
MAP_TOLERANCE = 1e-4  # max |map_onnx - map_torch|, absolute (maps are ReLU features of order 0.1-1)


class ExportMismatchError(ValueError):
    """The exported graph's outputs differ from PyTorch's beyond the tolerance."""


class ExportGraph(nn.Module):
    """What the ONNX graph computes: uint8 `(B, H, W, 3)` -> (score in MOS units `(B,)`, map `(B, 8, S, S)`).

    Args:
        model: a student in eval mode.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.preprocessing: Preprocessing = model.config.preprocessing
        self.mos_scale = float(model.config.mos_scale)

    def forward(
        self, images: torch.Tensor, statistics: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`statistics`: float32 `(B, k)` for a student that reads statistics measured before the resize (the
        graph's second input), None otherwise."""
        kwargs = self.preprocessing.model_kwargs(statistics)
        score, quality_map = self.model(self.preprocessing.to_tensor(images), **kwargs)
        return score * self.mos_scale, quality_map


def architecture_of(name_or_path: str) -> str:
    """The architecture name of a named configuration or checkpoint, without building or loading it."""
    from dpiqa import models

    if name_or_path in models.MODELS:
        return models.MODELS[name_or_path][0]
    data = checkpoint.read_json(models.resolve(name_or_path), checkpoint.CONFIG_NAME)
    if data is None:
        raise FileNotFoundError(f"{name_or_path}: no config.json (not a DP-IQA checkpoint, named model or Hub id)")
    return str(data.get("architecture"))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def random_images(batch: int, preprocessing: Preprocessing, seed: int) -> np.ndarray:
    """Uniform random uint8 images `(batch, H, W, 3)` at the model's input size."""
    height, width = preprocessing.size
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def random_inputs(batch: int, preprocessing: Preprocessing, seed: int) -> tuple[np.ndarray, ...]:
    """The graph's inputs: `random_images`, and for a student that reads statistics measured before the
    resize, uniform random float32 `(batch, k)` in [0, 2) (the range `jpeg_grid` spans)."""
    images = random_images(batch, preprocessing, seed)
    if not preprocessing.statistics:
        return (images,)
    rng = np.random.default_rng(seed + 1)
    return images, rng.uniform(0, 2, (batch, preprocessing.statistics_width)).astype(np.float32)


def input_names(preprocessing: Preprocessing) -> list[str]:
    from dpiqa.models.onnx_scorer import INPUT_NAME, STATISTICS_NAME

    return [INPUT_NAME, *([STATISTICS_NAME] if preprocessing.statistics else [])]


def validate(
    onnx_path: Path,
    graph: ExportGraph,
    batches: tuple[int, ...],
    seed: int = 0,
    threads: int | None = None,
) -> dict:
    """Run the ONNX file on onnxruntime and `graph` on PyTorch on the same random images, per batch size.

    Args:
        onnx_path: the exported file.
        graph: the PyTorch graph it was exported from.
        batches: batch sizes to compare at (a dynamic-batch export: 1 and a larger one).
        seed: seed of the random images (batch `b` uses `seed + b`).
        threads: onnxruntime intra-op threads (default: torch's).

    Returns:
        `{"tolerance": {...}, "batches": {b: {"score_max_abs_diff", "map_max_abs_diff"}}}`.

    Raises:
        ExportMismatchError: a difference is beyond `SCORE_TOLERANCE * mos_scale` or `MAP_TOLERANCE`.
    """
    from dpiqa.models.onnx_scorer import OUTPUT_NAMES, make_session

    session = make_session(onnx_path, threads)
    score_tol = SCORE_TOLERANCE * graph.mos_scale
    report = {
        "tolerance": {"score": score_tol, "map": MAP_TOLERANCE},
        "inputs": f"uniform random uint8, seed {seed} + batch size",
        "batches": {},
    }
    for batch in batches:
        inputs = random_inputs(batch, graph.preprocessing, seed + batch)
        with torch.inference_mode():
            score, quality_map = (t.numpy() for t in graph(*(torch.from_numpy(a) for a in inputs)))
        feed = dict(zip(input_names(graph.preprocessing), inputs, strict=True))
        onnx_score, onnx_map = session.run(list(OUTPUT_NAMES), feed)
        if onnx_score.shape != score.shape or onnx_map.shape != quality_map.shape:
            raise ExportMismatchError(
                f"batch {batch}: ONNX output shapes {onnx_score.shape}, {onnx_map.shape} "
                f"differ from PyTorch's {score.shape}, {quality_map.shape}"
            )
        diffs = {
            "score_max_abs_diff": float(np.abs(onnx_score - score).max()),
            "map_max_abs_diff": float(np.abs(onnx_map - quality_map).max()),
        }
        report["batches"][str(batch)] = diffs
        log.info(
            "validate batch %d: score max |diff| %.3g (tolerance %.3g), map max |diff| %.3g (tolerance %.3g)",
            batch,
            diffs["score_max_abs_diff"],
            score_tol,
            diffs["map_max_abs_diff"],
            MAP_TOLERANCE,
        )
        if not (diffs["score_max_abs_diff"] <= score_tol and diffs["map_max_abs_diff"] <= MAP_TOLERANCE):
            raise ExportMismatchError(
                f"batch {batch}: ONNX differs from PyTorch beyond tolerance: score max |diff| "
                f"{diffs['score_max_abs_diff']:.3g} (tolerance {score_tol:.3g}), map max |diff| "
                f"{diffs['map_max_abs_diff']:.3g} (tolerance {MAP_TOLERANCE:.3g})"
            )
    return report


def _refuse_existing(output: str, overwrite: bool, storage_options: dict | None = None) -> None:
    """An existing export is replaced only with `overwrite`; a PyTorch checkpoint never is; an existing file
    is no folder to export into (checked before the export, which takes minutes for a large student)."""
    fs, path = storage.get_fs(output, storage_options)
    if fs.isfile(path):
        raise ValueError(
            f"--output {output} is an existing file; give a folder (it gets model.onnx, config.json, card.json)"
        )
    if fs.exists(storage.fs_join(path, checkpoint.WEIGHTS_NAME)):
        raise ValueError(f"{output}: holds a PyTorch checkpoint (model.safetensors); export to another folder")
    existing = [n for n in checkpoint.ONNX_FILES if fs.exists(storage.fs_join(path, n))]
    if existing and not overwrite:
        raise ValueError(f"{output}: already holds {', '.join(existing)}; choose another --output or pass --overwrite")


def export_onnx(
    model: str,
    output: str,
    format: str = "onnx",
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    batch_size: int = 1,
    validate_batch: int = 4,
    overwrite: bool = False,
    seed: int = 0,
    storage_options: dict | None = None,
) -> dict:
    """Export a student to an ONNX folder at `output`, validated against PyTorch before anything is written.

    Args:
        model: a named configuration, shipped name, checkpoint folder, URL or Hub id of a student.
        output: the export folder (local or fsspec URL); gets `config.json`, `model.onnx`, `card.json`.
        format: `onnx` (the only one).
        opset: ONNX opset of the graph.
        dynamic_batch: a symbolic batch axis (any batch size); else the graph takes exactly `batch_size`.
        batch_size: the fixed batch of a static export.
        validate_batch: the larger batch size a dynamic export is validated at (besides 1).
        overwrite: replace an existing export or checkpoint at `output`.
        seed: seed of the validation images.
        storage_options: fsspec options for `output` (endpoint, credentials).

    Returns:
        The card written to `output/card.json`.

    Raises:
        ValueError: not a student, unknown format, `output` taken, or `ExportMismatchError`.
    """
    from dpiqa import models

    _check_request(model, output, format, batch_size, validate_batch)
    _refuse_existing(output, overwrite, storage_options)

    info = models.describe(model)
    student = models.load_model(model).float().eval()
    graph = ExportGraph(student).eval()
    with tempfile.TemporaryDirectory(prefix="dpiqa-export-") as tmp:
        staging = Path(tmp)
        onnx_path = staging / checkpoint.ONNX_NAME
        log.info(
            "exporting %s (%s, %dx%d) to ONNX opset %d, %s batch ...",
            model,
            info.checkpoint_hash,
            *graph.preprocessing.size,
            opset,
            "dynamic" if dynamic_batch else f"fixed {batch_size}",
        )
        _write_onnx(graph, onnx_path, opset, dynamic_batch, batch_size, seed)
        batches = (1, validate_batch) if dynamic_batch else (batch_size,)
        validation = validate(onnx_path, graph, tuple(dict.fromkeys(batches)), seed=seed)

        (staging / checkpoint.CONFIG_NAME).write_text(checkpoint.config_json(student.architecture, student.config))
        card = {
            **student.card(),
            # the graph holds float32 weights whatever the source stored (its `weights_dtype` goes into `source`)
            **{k: v for k, v in info.card.items() if k != "weights_dtype"},
            "format": "onnx",
            "sha256": checkpoint.content_hash(staging, (checkpoint.CONFIG_NAME, checkpoint.ONNX_NAME)),
            "source": {
                "model": model,
                "checkpoint_hash": info.checkpoint_hash,
                "weights_dtype": info.card.get("weights_dtype", "float32"),
            },
            "onnx": _onnx_section(onnx_path, info, graph.preprocessing, opset, dynamic_batch, batch_size, validation),
        }
        (staging / checkpoint.CARD_NAME).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        checkpoint.put_files(staging, output, checkpoint.ONNX_FILES, storage_options)
    log.info("wrote %s (%s)", os.path.join(output, checkpoint.ONNX_NAME), card["sha256"])
    return card


def _check_request(model: str, output: str, format: str, batch_size: int, validate_batch: int) -> None:
    """Refuse, before anything is loaded, what cannot be exported: another format, a file as the output, a batch
    below 1, a teacher, an ONNX export."""
    from dpiqa import models

    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    if output.endswith(".onnx"):
        raise ValueError(f"{output}: --output is a folder (it gets model.onnx, config.json and card.json)")
    if batch_size < 1 or validate_batch < 1:
        raise ValueError("batch sizes must be at least 1")
    architecture = architecture_of(model)
    if architecture not in EXPORTABLE:
        raise UsageError(
            f"{model}: a {architecture!r} cannot be exported; only the student ({', '.join(EXPORTABLE)}) "
            "exports to ONNX. The teacher (Stable Diffusion VAE + U-Net) stays on the torch runtime: score "
            "it with `dpiqa score`, or distill it into a student and export that"
        )
    if models.runtime_of(model) == "onnx":
        raise ValueError(f"{model}: already an ONNX export")


def _write_onnx(graph: ExportGraph, onnx_path: Path, opset: int, dynamic_batch: bool, batch_size: int, seed: int):
    """Trace `graph` on random inputs and write it to `onnx_path`, then check the file with onnx's checker."""
    import onnx

    # torch.export specialises a dimension of size 1 as a constant, so a dynamic axis is traced at 2.
    example_batch = 2 if dynamic_batch else batch_size
    example = tuple(torch.from_numpy(a) for a in random_inputs(example_batch, graph.preprocessing, seed))
    names = input_names(graph.preprocessing)
    batch_axis = torch.export.Dim("batch", min=1)
    dynamic_shapes = tuple({0: batch_axis} for _ in names) if dynamic_batch else None
    for name in ("onnxscript", "onnx_ir"):  # one INFO line per optimisation pass would drown our progress
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.WARNING)
    t0 = time.monotonic()
    # The torch.export-based exporter (torch's default since 2.9; the TorchScript one is deprecated).
    # One file, no external data: the largest student (B7) is ~325 MB, far below protobuf's 2 GB.
    torch.onnx.export(
        graph,
        example,
        str(onnx_path),
        dynamo=True,
        input_names=names,
        output_names=["score", "map"],
        dynamic_shapes=dynamic_shapes,
        opset_version=opset,
        external_data=False,
        verbose=False,
    )
    log.info(
        "exported in %.1f s (%.1f MB); checking the graph",
        time.monotonic() - t0,
        onnx_path.stat().st_size / 1e6,
    )
    onnx.checker.check_model(str(onnx_path), full_check=True)


def _onnx_section(
    onnx_path: Path,
    info,  # dpiqa.models.ModelInfo
    preprocessing: Preprocessing,
    opset: int,
    dynamic_batch: bool,
    batch_size: int,
    validation: dict,
) -> dict:
    """The card's `onnx` section: the file, its exporter and versions, the input and output contract, the
    validation against PyTorch."""
    import onnx
    import onnxruntime

    height, width = preprocessing.size
    batch_dim = "batch" if dynamic_batch else batch_size
    inputs = {
        "images": {
            "dtype": "uint8",
            "layout": "NHWC",
            "color": "RGB",
            "shape": [batch_dim, height, width, 3],
            "note": "resized to preprocessing.size with preprocessing.interpolation; "
            "the graph scales to preprocessing.value_range and transposes to NCHW",
        }
    }
    if preprocessing.statistics:
        inputs["statistics"] = {
            "dtype": "float32",
            "shape": [batch_dim, preprocessing.statistics_width],
            "note": "measured on the decoded image before the resize: "
            + ", ".join(preprocessing.statistics)
            + " (dpiqa.models.preprocessing.Preprocessing.measure)",
        }
    return {
        "file": checkpoint.ONNX_NAME,
        "sha256": file_sha256(onnx_path),
        "bytes": onnx_path.stat().st_size,
        "opset": opset,
        "exporter": "torch.onnx.export(dynamo=True)",
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "dynamic_batch": dynamic_batch,
        "batch_size": None if dynamic_batch else batch_size,
        "inputs": inputs,
        "outputs": {
            "score": {"dtype": "float32", "shape": [batch_dim], "units": f"MOS (model output x {info.mos_scale:g})"},
            "map": {"dtype": "float32", "shape": [batch_dim, *info.map_shape]},
        },
        "validation": validation,
    }
