"""The Ray Data transform (public): `dpiqa.ray.Scorer` for `ds.map_batches`, and `dpiqa.ray.add_scores`, which
applies it with the resources `dpiqa score` would choose. Both live in `engine/ray_transform.py` and are looked up
on first use, so importing this module imports neither Ray nor torch.

    import ray.data, dpiqa.ray
    ds = ray.data.read_webdataset("shards/", decoder=None)
    ds = ds.map_batches(dpiqa.ray.Scorer, fn_constructor_kwargs={"model": "demo", "column": "jpg"},
                        batch_size=32, concurrency=1)   # + num_gpus=1 on a GPU cluster
    ds.write_parquet("scores/")
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Scorer", "add_scores"]  # noqa: F822 - defined in the engine, looked up by __getattr__


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("dpiqa.engine.ray_transform"), name)
    raise AttributeError(f"module 'dpiqa.ray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
