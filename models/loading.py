"""Loading a model where it runs: `load_model` (PyTorch weights), `load_scorer` (the scorer for this
worker, torch or ONNX or a baseline), and the checks of how it may run (`runtime_of`, `check_runtime`)."""

from __future__ import annotations

import importlib
import logging
import os
from typing import TYPE_CHECKING

from dpiqa.errors import UsageError
from dpiqa.models import checkpoint
from dpiqa.models.registry import BASELINES, MODELS, RANDOM_SEED, build, model_class, resolve
from dpiqa.models.run_options import RunOptions

if TYPE_CHECKING:
    import torch
    from torch import nn

    from dpiqa.models.scorer import ImageScorer

log = logging.getLogger(__name__)


def load_model(name_or_path: str, device: str | torch.device = "cpu") -> nn.Module:
    """A model from a named configuration (random weights), a shipped name, a folder, URL or Hub id."""
    if name_or_path in MODELS:
        log.warning(
            "%s: a named configuration with random weights (seed %d), not a trained model", name_or_path, RANDOM_SEED
        )
        return build(name_or_path, device=device).eval()
    location = resolve(name_or_path)
    config = checkpoint.read_json(location, checkpoint.CONFIG_NAME)
    if config is None:
        raise FileNotFoundError(f"{name_or_path}: no config.json (not a DP-IQA checkpoint)")
    if runtime_of(name_or_path) == "onnx":
        raise ValueError(
            f"{name_or_path}: an ONNX export has no PyTorch weights; score it with "
            "`load_scorer` (onnxruntime) or load the checkpoint it was exported from"
        )
    return model_class(config["architecture"]).from_pretrained(location, device=device)


def runtime_of(name_or_path: str) -> str:
    """`onnx` for an ONNX export (`dpiqa export`), `torch` for anything else; reads the card only."""
    if name_or_path in MODELS:
        return "torch"
    if name_or_path in BASELINES:
        return "baseline"
    card = checkpoint.read_json(resolve(name_or_path), checkpoint.CARD_NAME) or {}
    return "onnx" if card.get("format") == "onnx" else "torch"


def check_runtime(name_or_path: str, model_runtime: str, options: RunOptions, address: str | None = None) -> None:
    """Refuse scoring options that do not fit the model's runtime, or the machine, with a message saying what
    to do.

    Args:
        name_or_path: the model, for the message.
        model_runtime: what the model runs on (`runtime_of`, or `ModelInfo.runtime`).
        options: what the user asked for (`RunOptions`): its runtime `auto` (the model's), `torch` or `onnx`,
            and the torch-only fast paths.
        address: the Ray cluster the job runs on, if one is named (also `RAY_ADDRESS`): its workers' GPUs are
            not this machine's, so `--device cuda` is then left to them.
    """
    runtime, device, precision = options.runtime, options.device, options.precision
    if device.startswith("cuda") and model_runtime == "torch" and not (address or os.environ.get("RAY_ADDRESS")):
        _check_cuda(device)
    if runtime == "onnx" and model_runtime != "onnx":
        raise UsageError(
            f"{name_or_path}: --runtime onnx needs an ONNX export; "
            f"create one with `dpiqa export --model {name_or_path} --output DIR` and score DIR"
        )
    if runtime == "torch" and model_runtime == "onnx":
        raise UsageError(
            f"{name_or_path}: an ONNX export runs on onnxruntime only; "
            "use --runtime auto or onnx, or score the checkpoint it was exported from"
        )
    if model_runtime == "onnx":
        unsupported = [
            name
            for name, bad in (
                (f"device {device}", device not in ("auto", "cpu")),
                (f"precision {precision}", precision not in ("auto", "fp32")),
                ("channels_last", options.channels_last),
                ("compile", options.compile),
            )
            if bad
        ]
        if unsupported:
            raise UsageError(
                f"{name_or_path}: the onnx runtime scores on the CPU in fp32; "
                f"{', '.join(unsupported)} apply to the torch runtime only"
            )


def _check_cuda(device: str) -> None:
    """`--device cuda` (or `cuda:N`) on a machine whose GPUs torch cannot see: refused before anything runs,
    instead of failing in the first worker after the output was claimed."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if index >= count:
        seen = f"only {count} CUDA GPU(s)" if count else "no CUDA GPU"
        raise UsageError(
            f"--device {device}: torch sees {seen} on this machine (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); use --device auto or cpu, or name a Ray cluster "
            "with GPUs (--address)"
        )


def load_scorer(name_or_path: str, options: RunOptions = RunOptions()) -> ImageScorer:  # noqa: B008 - frozen
    """Load a model for inference on this worker: a `Scorer` (torch; see it for the options) or, for an
    ONNX export, a `dpiqa.models.onnx_scorer.OnnxScorer` (onnxruntime on the CPU, torch's thread count).

    Args:
        name_or_path: a named configuration, shipped name, checkpoint or ONNX export (folder, URL, Hub id).
        options: how it runs (`RunOptions`), checked against the model's runtime by `check_runtime`; its
            `threads` are set for this process (torch's, which onnxruntime also takes).
    """
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    if name_or_path in BASELINES:
        module, cls = BASELINES[name_or_path].scorer.split(":")
        return getattr(importlib.import_module(module), cls)()
    model_runtime = runtime_of(name_or_path)
    check_runtime(name_or_path, model_runtime, options)
    if model_runtime == "onnx":
        from dpiqa.models.onnx_scorer import OnnxScorer  # onnxruntime is imported only where it is used

        return OnnxScorer(resolve(name_or_path))
    from dpiqa.models.scorer import Scorer

    return Scorer(load_model(name_or_path), options)
