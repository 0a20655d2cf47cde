"""Student backbones: built from timm or torchvision by name, with their pretrained (ImageNet) weights
fetched through the library's own download and cache, or read from a file (fsspec) on clusters without
internet. When pretrained weights are asked for and cannot be had, the error says which, from where, and
how to proceed; nothing falls back to random initialisation on its own.

Names: `torchvision/<model>` takes the `features` trunk of a torchvision classifier (the paper's student is
torchvision's `efficientnet_b7` with its `IMAGENET1K_V1` weights, which the DP-IQA authors used); any
other name is a timm model (`mobilenetv3_large_100`, ...), built headless (no classifier, no pooling).
"""

from __future__ import annotations

import io
import logging
from typing import Any

import timm
import torch
from torch import nn

log = logging.getLogger(__name__)

TORCHVISION = "torchvision/"
# Keys of a classifier's head that a backbone file may carry and a headless backbone does not have.
HEAD_PREFIXES = ("classifier.", "fc.", "head.", "head_drop.", "last_linear.")


class PretrainedWeightsError(ValueError):
    """Pretrained weights were asked for and cannot be had (one line: which, from where, what to do)."""


class TorchvisionFeatures(nn.Module):
    """The `features` trunk of a torchvision classification model as a backbone: `forward_features(x)` is its
    last feature map, `num_features` its channels. The state dict keeps torchvision's names (`features.*`),
    so torchvision's own weight files load into it as they are.

    Args:
        name: a torchvision model with a `features` trunk (`efficientnet_b7`, `mobilenet_v3_large`, ...).
        kwargs: model options (`stochastic_depth_prob`, ...).
    """

    def __init__(self, name: str, kwargs: dict | None = None) -> None:
        super().__init__()
        import torchvision

        model = torchvision.models.get_model(name, weights=None, **(kwargs or {}))
        if not hasattr(model, "features"):
            raise ValueError(f"torchvision/{name} has no `features` trunk to use as a backbone")
        self.features = model.features
        convs = [m for m in self.features.modules() if isinstance(m, nn.Conv2d)]
        self.num_features = convs[-1].out_channels

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def create_backbone(name: str, kwargs: dict | None = None) -> nn.Module:
    """A randomly initialised headless backbone (pretrained weights are loaded by `load_pretrained`)."""
    if name.startswith(TORCHVISION):
        return TorchvisionFeatures(name[len(TORCHVISION) :], kwargs)
    return timm.create_model(name, pretrained=False, num_classes=0, global_pool="", **(kwargs or {}))


def pretrained_source(name: str, weights_file: str | None = None) -> str:
    """Which pretrained weights `load_pretrained` takes for backbone `name`, and from where (for messages
    and the card)."""
    if weights_file:
        return f"the weights file {weights_file}"
    if name.startswith(TORCHVISION):
        weights = _torchvision_weights(name[len(TORCHVISION) :])
        return f"torchvision's {type(weights).__name__}.{weights.name} ({weights.url})"
    cfg = timm.models.get_pretrained_cfg(name)
    where = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) if cfg is not None else None
    return f"timm's pretrained {name}" + (f" ({where})" if where else "")


def load_pretrained(
    backbone: nn.Module,
    name: str,
    kwargs: dict | None = None,
    weights_file: str | None = None,
    storage_options: dict | None = None,
) -> str:
    """Load pretrained weights into a backbone made by `create_backbone`; returns `pretrained_source`.

    Args:
        backbone: the backbone.
        name: its name (`torchvision/efficientnet_b7`, a timm name).
        kwargs: the options it was built with (timm builds a pretrained twin with them).
        weights_file: a state dict file (local or fsspec URL; `.safetensors`, or a torch file read with
            `weights_only=True`) instead of the library's download; a classifier head in it is ignored.
        storage_options: fsspec options for `weights_file`.

    Raises:
        PretrainedWeightsError: the weights cannot be fetched or read, or do not fit the backbone.
    """
    source = pretrained_source(name, weights_file)
    try:
        if weights_file:
            state = read_state_dict(weights_file, storage_options)
        elif name.startswith(TORCHVISION):
            state = _torchvision_weights(name[len(TORCHVISION) :]).get_state_dict(progress=False)
            state = {f"features.{k[len('features.') :]}": v for k, v in state.items() if k.startswith("features.")}
        else:
            state = timm.create_model(
                name, pretrained=True, num_classes=0, global_pool="", **(kwargs or {})
            ).state_dict()
    except PretrainedWeightsError:
        raise
    except Exception as exc:  # any failure to fetch is the same decision for the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PretrainedWeightsError(
            f"pretrained weights for backbone {name}: {source} could not be had ({type(exc).__name__}: {first}); "
            "pass --backbone-weights PATH_OR_URL to read them from a file, or --no-pretrained to train from "
            "random initialisation on purpose"
        ) from None
    state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise PretrainedWeightsError(
            f"{source} does not fit backbone {name}: {len(missing)} missing (first: {missing[:3]}), "
            f"{len(unexpected)} unexpected (first: {unexpected[:3]})"
        )
    log.info("backbone %s: loaded %s (%d tensors)", name, source, len(state))
    return source


def read_state_dict(url: str, storage_options: dict | None = None) -> dict[str, torch.Tensor]:
    """A state dict from a `.safetensors` file or a torch file (loaded with `weights_only=True`: tensors
    only, no code), local or any fsspec URL; a checkpoint that nests it under `state_dict` or `model` is
    unwrapped."""
    from dpiqa import storage

    fs, path = storage.get_fs(url, storage_options)
    with fs.open(path, "rb") as f:
        data = f.read()
    if url.endswith(".safetensors"):
        import safetensors.torch

        return safetensors.torch.load(data)
    state: Any = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{url}: holds a {type(state).__name__}, not a state dict")
    return state


def _torchvision_weights(name: str) -> Any:
    """torchvision's ImageNet-1k weights of a model (`IMAGENET1K_V1`, the ones the paper used for B7)."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except ValueError as exc:
        raise PretrainedWeightsError(f"torchvision has no model {name!r}: {exc}") from None
    return enum.IMAGENET1K_V1 if hasattr(enum, "IMAGENET1K_V1") else enum.DEFAULT
