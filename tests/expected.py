"""What the tests expect, written out here rather than read back from the code under test: the Parquet schemas,
the checkpoint content hash (computed with hashlib), the named configurations' input sizes and map shapes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa

# (name, type, nullable) of `scores/NAME.parquet` and `maps/NAME.parquet`, as the README documents them.
SCORES_FIELDS = [
    ("key", pa.string(), True),
    ("shard", pa.string(), False),
    ("index", pa.int64(), False),
    ("score", pa.float32(), True),
    ("model", pa.string(), False),
    ("width", pa.int32(), True),
    ("height", pa.int32(), True),
    ("status", pa.string(), False),
    ("error", pa.string(), True),
]
MAPS_FIELDS = [
    ("key", pa.string(), True),
    ("shard", pa.string(), False),
    ("index", pa.int64(), False),
    ("map", pa.binary(), False),
]
# The keys of the `dpiqa` key-value metadata of a scores file written by `dpiqa score`.
SCORES_METADATA_KEYS = {
    "architecture",
    "checkpoint_hash",
    "code_version",
    "config_hash",
    "model",
    "mos_scale",
    "preprocessing",
}

# Named configuration -> (input (height, width), quality map shape): the spec's for the full-size models.
SHAPES = {
    "dpiqa-student": ((512, 512), (8, 64, 64)),
    "dpiqa-student-small": ((64, 64), (8, 16, 16)),
    "dpiqa-student-tiny": ((64, 64), (8, 16, 16)),
    "dpiqa-student-vits14": ((224, 224), (8, 16, 16)),
    "dpiqa-teacher": ((512, 512), (8, 64, 64)),
    "dpiqa-teacher-small": ((64, 64), (8, 16, 16)),
    "dpiqa-teacher-tiny": ((64, 64), (8, 16, 16)),
}


def fields(schema: pa.Schema) -> list[tuple]:
    return [(f.name, f.type, f.nullable) for f in schema]


def content_sha256(directory: Path, names: tuple[str, ...] = ("config.json", "model.safetensors")) -> str:
    """The checkpoint hash as the README defines it: sha256 over config.json, then the weights file."""
    h = hashlib.sha256()
    for name in names:
        h.update((Path(directory) / name).read_bytes())
    return "sha256:" + h.hexdigest()
