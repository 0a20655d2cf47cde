"""Our checkpoint format: a directory with `config.json`, `model.safetensors` and `card.json`.

An ONNX export of a student (`models/export.py`) is the same directory with `model.onnx` in place of
`model.safetensors` and `"format": "onnx"` in its card.

The directory may be local, any fsspec URL (`s3://...`) or a Hugging Face Hub repo id. No pickle is
read or written. A content hash (sha256 over `config.json` and `model.safetensors`) identifies a
checkpoint; it is stored in the card when saving and checked when loading.

We write this small layer instead of using diffusers' `ModelMixin` or huggingface_hub's
`PyTorchModelHubMixin` because neither reads or writes fsspec URLs or carries a card with a content
hash; the weights themselves go through `safetensors.torch` as in both.

Its parts, each re-exported here: `checkpoint_files` (file names, locations, the local cache, hashing and
checks), `checkpoint_config` (config <-> JSON), `checkpoint_weights` (the stored dtype, parameter counts),
`checkpoint_mixin` (`CheckpointMixin`: `save_pretrained` / `from_pretrained`).
"""

from dpiqa.models.checkpoint_config import config_from_dict, config_json, config_to_dict
from dpiqa.models.checkpoint_files import (
    CARD_NAME,
    CONFIG_NAME,
    FILES,
    ONNX_FILES,
    ONNX_NAME,
    WEIGHTS_NAME,
    cache_dir,
    check_weights,
    content_hash,
    is_hub_id,
    is_url,
    local_dir,
    mirror,
    put_files,
    read_json,
)
from dpiqa.models.checkpoint_mixin import CheckpointMixin
from dpiqa.models.checkpoint_weights import WEIGHTS_DTYPES, parameter_counts, round_weights, storage_dtype

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "FILES",
    "ONNX_FILES",
    "ONNX_NAME",
    "WEIGHTS_DTYPES",
    "WEIGHTS_NAME",
    "CheckpointMixin",
    "cache_dir",
    "check_weights",
    "config_from_dict",
    "config_json",
    "config_to_dict",
    "content_hash",
    "is_hub_id",
    "is_url",
    "local_dir",
    "mirror",
    "parameter_counts",
    "put_files",
    "read_json",
    "round_weights",
    "storage_dtype",
]
