"""The output row schema of `dpiqa score`, its status classes and the Parquet key-value metadata."""

from __future__ import annotations

import json

import pyarrow as pa

from dpiqa.engine.shards import tarstream

# Every sample of every shard yields exactly one row; `status` says what happened to it.
OK = "ok"
TRUNCATED = tarstream.TRUNCATED  # the tar ended inside this member, inside a header or before its end
EMPTY = "empty_file"  # a zero-byte image member
NOT_AN_IMAGE = "not_an_image"  # an image-named member whose bytes are no image format PIL knows
DECODE_ERROR = "decode_error"  # a known image format whose data is corrupt
NO_IMAGE = "no_image"  # a sample with no image member (only .txt/.json, say)
TOO_LARGE = "too_large"  # more pixels than the decoder allows (decompression bomb)
DUPLICATE_KEY = "duplicate_key"  # a key seen earlier in the same shard
SCORE_ERROR = "score_error"  # the model produced no finite score for this image
CORRUPT = tarstream.CORRUPT  # a compressed stream fails its checksum, or bytes that are no tar follow the archive
SPECIAL_MEMBER = "special_member"  # the image member is a symbolic link, FIFO, device, or a dangling hard link
SEVERAL_IMAGES = "several_images"  # the sample holds more than one image member (which one to score?)
STATUSES = (
    OK,
    TRUNCATED,
    CORRUPT,
    EMPTY,
    NOT_AN_IMAGE,
    DECODE_ERROR,
    NO_IMAGE,
    SEVERAL_IMAGES,
    SPECIAL_MEMBER,
    TOO_LARGE,
    DUPLICATE_KEY,
    SCORE_ERROR,
)

# Internal row kinds that never reach the output: the reader's end-of-shard row carries the shard's
# sample count (`index`) and, for a shard that could not be read, the error.
END_OF_SHARD = "_end"
SHARD_FAILED = "_shard_failed"
CONTROL = (END_OF_SHARD, SHARD_FAILED)

# Images with more pixels become `too_large` rows (PIL's own default bomb limit).
DEFAULT_MAX_PIXELS = 89_478_485

IMAGE_EXTENSIONS = (
    "jpg",
    "jpeg",
    "png",
    "webp",
    "bmp",
    "tif",
    "tiff",
    "gif",
    "ppm",
    "pgm",
    "jp2",
    "j2k",
    "avif",
    "heic",
    "heif",
)

SCORES_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("index", pa.int64(), nullable=False),
        pa.field("score", pa.float32()),
        pa.field("model", pa.string(), nullable=False),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
    ]
)

MAPS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("index", pa.int64(), nullable=False),
        pa.field("map", pa.binary(), nullable=False),  # float16, C-order, shape in the metadata
    ]
)

METADATA_KEY = b"dpiqa"


def with_metadata(schema: pa.Schema, meta: dict) -> pa.Schema:
    """Attach the run's identity (model, checkpoint hash, preprocessing, code version) to a schema."""
    return schema.with_metadata({METADATA_KEY: json.dumps(meta, sort_keys=True).encode()})


def read_metadata(schema: pa.Schema) -> dict:
    """The identity dictionary that `with_metadata` stored, or `{}`."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}
