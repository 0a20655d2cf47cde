"""Thumbnails of chosen samples, read back from their shards by position and checked by key."""

from __future__ import annotations

import base64
import io
import logging
import warnings
from collections import defaultdict
from dataclasses import dataclass

from PIL import Image

log = logging.getLogger(__name__)

THUMB_SIZE = 160
# A thumbnail never decodes more than this (the scored image passed the scorer's own pixel limit, but the
# shard may have changed since).
MAX_PIXELS = 1 << 28


@dataclass
class Thumbnail:
    """A small JPEG as a data URI, or why there is none."""

    data_uri: str | None = None
    error: str | None = None


def make_thumbnail(data: bytes, size: int = THUMB_SIZE) -> str:
    """Image bytes -> `data:image/jpeg;base64,...` of at most `size` x `size` pixels (aspect kept)."""
    from dpiqa.images import to_rgb

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(f"{img.width}x{img.height} is too large for a thumbnail")
        if img.format == "JPEG":
            img.draft("RGB", (size, size))  # DCT-domain downscaling: decode only what the thumbnail needs
        rgb = to_rgb(img)
        rgb.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def read_thumbnails(
    wanted: list[tuple[str, int, str | None]], storage_options: dict | None = None, size: int = THUMB_SIZE
) -> dict[tuple[str, int], Thumbnail]:
    """Thumbnails of samples given as `(shard URL, index, key)`.

    Each shard holding a wanted sample is streamed with the shard reader only up to the last wanted
    position; nothing else is kept. A sample whose key differs from the one scored (the shard changed
    since), or that cannot be read or decoded, gets a `Thumbnail` with an error instead.

    Args:
        wanted: the samples, by shard URL and position in the shard, with the key the scores name.
        storage_options: fsspec options for opening the shards.
        size: the thumbnail's longest side in pixels.
    """
    from dpiqa.engine.stages.source import shard_samples

    by_shard: dict[str, dict[int, str | None]] = defaultdict(dict)
    for url, index, key in wanted:
        by_shard[url][index] = key
    out: dict[tuple[str, int], Thumbnail] = {}
    for url, indices in sorted(by_shard.items()):
        last = max(indices)
        try:
            with shard_samples(url, storage_options) as samples:
                for position, sample in enumerate(samples):
                    if position in indices:
                        out[(url, position)] = _thumbnail(sample, indices[position], size)
                    if position >= last:
                        break
        except Exception as exc:  # a shard that cannot be read costs only its thumbnails
            log.warning("thumbnails: cannot read %s: %s", url, exc)
            for index in indices:
                out.setdefault((url, index), Thumbnail(error=f"cannot read shard: {type(exc).__name__}: {exc}"))
        for index in indices:
            out.setdefault((url, index), Thumbnail(error="the shard has fewer samples than when it was scored"))
    return out


def _thumbnail(sample, key: str | None, size: int) -> Thumbnail:  # engine.stages.source.Sample
    if key is not None and sample.key != key:
        return Thumbnail(error=f"sample at this position has key {sample.key!r}, not {key!r}: shard changed")
    image = sample.image_member()
    if image is None:
        return Thumbnail(error=sample.error or "no image member")
    try:
        return Thumbnail(data_uri=make_thumbnail(image[1], size))
    except Exception as exc:  # an undecodable image costs only its thumbnail
        return Thumbnail(error=f"cannot decode {image[0]}: {type(exc).__name__}: {exc}")
