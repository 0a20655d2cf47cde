"""A tiny CLIP text model with projection and a character-level tokenizer, built offline for tests."""

from __future__ import annotations

import string


def tiny_clip_tokenizer():
    """A character-level CLIP BPE vocabulary (no merges): enough to tokenize any lowercase prompt offline."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + "_-,.":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_clip(projection_dim: int, tokenizer=None):
    """A randomly initialised `CLIPTextModelWithProjection` (2 layers, width 24) in eval mode, whose padding
    token is the end-of-text token as in openai/clip-vit-large-patch14."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    tokenizer = tokenizer or tiny_clip_tokenizer()
    return CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            projection_dim=projection_dim,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    ).eval()
