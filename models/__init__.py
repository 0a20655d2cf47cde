"""DP-IQA models: the teacher and the student (one file per architecture), their checkpoint format, and
the registry that names them (`registry.py`), loading (`loading.py`) and describing (`description.py`).

Importing `models` is cheap: each name's module (and with it torch, timm and torchvision) is imported on
first use of the name (`dpiqa.models.describe`, `dpiqa.models.load_scorer`, ...), so the command line's `--help` and
the driver's light work do not pay for it.
"""

from __future__ import annotations

import importlib
from typing import Any

_REGISTRY = {
    "model_class",
    "resolve",
    "named_config",
    "build",
    "ARCHITECTURES",
    "MODELS",
    "SHIPPED",
    "RANDOM_SEED",
    "BASELINES",
    "Baseline",
}
_ELSEWHERE = {
    "load_model": "dpiqa.models.loading",
    "runtime_of": "dpiqa.models.loading",
    "check_runtime": "dpiqa.models.loading",
    "load_scorer": "dpiqa.models.loading",
    "ModelInfo": "dpiqa.models.description",
    "describe": "dpiqa.models.description",
    "Scorer": "dpiqa.models.scorer",
    "ImageScorer": "dpiqa.models.scorer",
    "StudentConfig": "dpiqa.models.student_config",
    "RunOptions": "dpiqa.models.run_options",
    "RUNTIMES": "dpiqa.models.run_options",
}


def __getattr__(name: str) -> Any:
    if name in _REGISTRY:
        return getattr(importlib.import_module("dpiqa.models.registry"), name)
    if name in _ELSEWHERE:
        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_REGISTRY, *_ELSEWHERE])
