"""The CLIP text encoder that turns the teacher's prompts into its text context (`embed_prompts`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from dpiqa.models.pretrained import CLIP_TEXT, clip_files, fetch
from dpiqa.models.teacher_config import POOLINGS

log = logging.getLogger(__name__)


def embed_prompts(
    prompts: Sequence[str],
    clip: str = CLIP_TEXT,
    pooling: str = "eos",
    storage_options: dict | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Each prompt's projected CLIP text feature `(K, projection_dim)`, float32.

    Args:
        prompts: the texts.
        clip: a CLIP checkpoint with a text projection (Hub id, local folder or fsspec URL).
        pooling: `eos`: CLIP's own projected pooled output (the final hidden state at the end-of-text
            token); `mean`: the final hidden states averaged over the prompt's tokens (start and end
            tokens included, padding excluded by the attention mask), then CLIP's text projection.
            CLIP's text encoder is causal, so padding never changes the hidden states of the real tokens:
            both are independent of how prompts are batched.
        storage_options: fsspec options for a URL.
        batch_size: prompts per forward pass.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    location = fetch(clip, storage_options, lambda files: clip_files(files, clip))
    tokenizer = CLIPTokenizer.from_pretrained(location)
    encoder = CLIPTextModelWithProjection.from_pretrained(location).eval()  # safetensors, else .bin (weights_only)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(
                list(prompts[start : start + batch_size]), padding=True, truncation=True, return_tensors="pt"
            )
            out = encoder(**batch)
            if pooling == "eos":
                chunks.append(out.text_embeds.float())
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
                mean = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
                chunks.append(encoder.text_projection(mean).float())
            log.info("embedded %d/%d prompts", min(start + batch_size, len(prompts)), len(prompts))
    return torch.cat(chunks).clone()
