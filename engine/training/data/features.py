"""A frozen backbone's features of each training image, computed once on an actor and cached."""

from __future__ import annotations

import numpy as np

from dpiqa.engine.stages.base import Batch, Stage
from dpiqa.engine.training.data.batches import batch_tensor
from dpiqa.engine.training.data.teacher import OutputCache


class BackboneFeatures(Stage):
    """Replaces each row's `image` by the frozen backbone's features of it, computed once (`features`,
    float32 `(C, h, w)`): a student whose backbone does not train then trains its head for every epoch
    without running the backbone again. An actor stage: the model is built once per actor, exactly as the
    training workers build it, so the features are the ones the backbone would give them.

    Args:
        spec: the student being trained (`dpiqa.engine.training.model.ModelSpec`).
        mos_scale: its labels' MOS scale.
        threads: torch threads.
        storage_options: fsspec options for the weights it is built from.
        batch_size: images per call.
        cache_dir: keep each image's features in an `OutputCache` there (a rerun after a kill resumes).
        seed: the torch seed the model is built after, the training loop's (`LoopConfig.seed`): a backbone
            without pretrained weights is then the one the workers train on.
    """

    name = "backbone-features"

    def __init__(
        self,
        spec,
        mos_scale: float,
        threads: int | None = None,  # ModelSpec
        storage_options: dict | None = None,
        batch_size: int = 32,
        cache_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        self.spec, self.mos_scale, self.threads, self.storage_options = spec, mos_scale, threads, storage_options
        self.batch_size, self.cache_dir, self.seed = batch_size, cache_dir, seed
        self.model = None
        self.cache = None

    def setup(self) -> None:
        import torch

        from dpiqa.engine.training.model import build_model
        from dpiqa.models.allocator import keep_freed_memory

        if self.threads:
            torch.set_num_threads(self.threads)
        keep_freed_memory()  # the backbone's forward pass on this CPU worker, as `Scorer` runs it on a CPU
        torch.manual_seed(self.seed)  # as `dpiqa.engine.training.loop.train_loop_per_worker` builds it
        self.model = build_model(self.spec, self.mos_scale, self.storage_options).eval()
        if self.cache_dir:
            self.cache = OutputCache(self.cache_dir, backbone_identity(self.model))

    def __call__(self, batch: Batch) -> Batch:
        import torch

        preprocessing = self.model.config.preprocessing
        statistics = batch["statistics"] if preprocessing.statistics else None
        measured_rows = statistics if statistics is not None else [None] * len(batch["image"])
        keys = (
            [OutputCache.key(img, m) for img, m in zip(batch["image"], measured_rows, strict=True)]
            if self.cache is not None
            else []
        )
        hits = [self.cache.get(k) for k in keys] if self.cache is not None else []
        if hits and all(h is not None for h in hits):
            features = np.stack([h["features"] for h in hits])
        else:
            with torch.inference_mode():
                x = preprocessing.to_tensor(batch_tensor(batch["image"]))
                measured = None if statistics is None else batch_tensor(statistics)
                features = self.model.backbone_features(x, measured).float().numpy()
            for key, f in zip(keys, features, strict=False):
                self.cache.put(key, features=f)
        out = {k: v for k, v in batch.items() if k not in ("image", "statistics")}
        out["features"] = features
        return out


# The config fields besides the backbone's weights that `backbone_features` depends on.
FEATURE_FIELDS = (
    "backbone",
    "backbone_kwargs",
    "input_norm",
    "aux_features",
    "image_size",
    "interpolation",
    "value_range",
)


def backbone_identity(model) -> str:  # a DPIQAStudent
    """What a student's backbone features depend on: the backbone's weights (hashed) and `FEATURE_FIELDS`;
    not the head, so runs that try other heads over one frozen backbone reuse its cached features."""
    import hashlib
    import json

    digest = hashlib.sha256()
    for name, tensor in sorted(model.backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    fields = {f: getattr(model.config, f) for f in FEATURE_FIELDS}
    return f"backbone features {digest.hexdigest()} {json.dumps(fields, sort_keys=True, default=str)}"


def with_backbone_features(
    ds,
    spec,
    mos_scale: float,
    threads: int | None = None,
    storage_options: dict | None = None,
    total: int | None = None,
    cache_dir: str | None = None,
    seed: int = 0,
):
    """`BackboneFeatures` on one actor, with progress lines (`total`: the images expected)."""
    from dpiqa.engine.executor.ray_data import actor_pool

    stage = BackboneFeatures(spec, mos_scale, threads, storage_options, cache_dir=cache_dir, seed=seed)
    return actor_pool(ds, stage, progress=("distill: backbone features", total))
