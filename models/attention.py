"""Cross-attention with a constant context: the teacher's prompt keys and values computed once, not per image."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn


def kv_cache_usable() -> bool:
    """The precomputed prompt keys/values stand in for the live computation only when no gradient is
    wanted (they are constants); the teacher and the processor both ask this one question."""
    return not torch.is_grad_enabled()


class CachedContextAttnProcessor(nn.Module):
    """A cross-attention processor with the keys and values of a constant context computed once.

    Same math as diffusers' `AttnProcessor2_0` for the attention layers of the SD U-Net (no spatial or
    group norm, no mask, no residual inside the attention); only `to_k(E')` and `to_v(E')`, which do
    not depend on the image, come from the cache, broadcast over the batch. We hand-write it because
    diffusers has no processor for a constant context. While gradients are enabled it defers to the
    original processor, so training and fine-tuning always see the live computation.

    Args:
        attn: the cross-attention layer.
        context: the text-adapted prompt context `(K, D)`.
        fallback: the layer's original processor.
    """

    def __init__(self, attn: Attention, context: torch.Tensor, fallback: Any) -> None:
        super().__init__()
        unsupported = [
            name
            for name, value in (
                ("spatial_norm", attn.spatial_norm),
                ("group_norm", attn.group_norm),
                ("norm_q", attn.norm_q),
                ("residual_connection", attn.residual_connection or None),
            )
            if value is not None
        ]
        if unsupported or attn.rescale_output_factor != 1.0:
            raise ValueError(f"CachedContextAttnProcessor does not support attention layers with {unsupported}")
        self.fallback = fallback
        self.heads = attn.heads
        context = context.unsqueeze(0)
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        key = key.view(1, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(1, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        # Stored 3-D (heads, K, head_dim) so `.to(memory_format=channels_last)` leaves them alone;
        # non-persistent buffers follow the model's device and dtype and never enter a checkpoint.
        self.register_buffer("key", key[0].contiguous(), persistent=False)
        self.register_buffer("value", value[0].contiguous(), persistent=False)

    def forward(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not kv_cache_usable():
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if attention_mask is not None:
            raise ValueError("CachedContextAttnProcessor: attention masks are not supported")
        batch_size = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        head_dim = query.shape[-1] // self.heads
        query = query.view(batch_size, -1, self.heads, head_dim).transpose(1, 2)
        shape = (batch_size, *self.key.shape)
        key = self.key.to(query.dtype).unsqueeze(0).expand(shape)
        value = self.value.to(query.dtype).unsqueeze(0).expand(shape)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch_size, -1, self.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)
