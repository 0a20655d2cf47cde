"""The dtype a checkpoint stores its weights as, rounding a model to it, and parameter counts."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and safetensors.torch are imported where weights are read or written
    import torch
    from torch import nn

WEIGHTS_DTYPES = ("float16", "bfloat16", "float32")


def storage_dtype(weights_dtype: str | None) -> torch.dtype | None:
    """The torch dtype a checkpoint stores its floating-point weights as (`WEIGHTS_DTYPES`); None: as they are.

    Raises:
        ValueError: not one of `WEIGHTS_DTYPES`.
    """
    if weights_dtype is None:
        return None
    if weights_dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"weights_dtype {weights_dtype!r} is not one of {', '.join(WEIGHTS_DTYPES)}")
    import torch

    return getattr(torch, weights_dtype)


def round_weights(model: nn.Module, weights_dtype: str | None) -> nn.Module:
    """Round `model`'s floating-point weights and buffers in place to what `save_pretrained(weights_dtype=...)`
    stores and `from_pretrained` loads back, so that what is measured on it (a training job's test metrics) is
    what the saved checkpoint scores."""
    stored = storage_dtype(weights_dtype)
    if stored is not None:
        import torch

        with torch.no_grad():
            for tensor in model.state_dict().values():
                if tensor.is_floating_point():
                    tensor.copy_(tensor.to(stored))
    return model


def parameter_counts(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}
