"""WebDataset shards whose `.json` member carries a score: labelled samples streamed for training at scale."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dpiqa.engine import schema
from dpiqa.engine.shards.listing import list_shards
from dpiqa.engine.stages.source import shard_samples

log = logging.getLogger(__name__)

# Why a sample was skipped (counted in `LabeledShards.skipped`); reader statuses (`truncated_tar`,
# `duplicate_key`, `no_image`) are counted under their own names.
NO_JSON = "no_json"
BAD_JSON = "bad_json"
NO_SCORE = "no_score"
BAD_SCORE = "bad_score"
SHARD_FAILED = "shard_failed"


@dataclass(frozen=True)
class LabeledSample:
    """One sample of a labelled shard.

    Args:
        shard: the shard's URL.
        key: the WebDataset `__key__` (with `shard`, the join key to any scores or teacher maps).
        ext: the image member's extension (`jpg`, `png`...).
        image: the encoded image bytes.
        mos: the score from the `.json` member, or NaN for an unlabelled sample when
            `require_score=False` (distillation uses labels where present).
    """

    shard: str
    key: str
    ext: str
    image: bytes
    mos: float
    index: int = -1  # position in the shard, as `dpiqa score` numbers its rows (the join key with `shard`)


class LabeledShards:
    """Labelled WebDataset shards, streamed one sample at a time, never holding a shard in memory.

    Bad samples are skipped and counted by reason in `skipped` (and logged): a reader failure
    (truncated tar, duplicate key, no image), a missing or unparsable `.json`, a missing score field
    or a score that is not a finite number. A shard that cannot be read is counted as `shard_failed`
    and the other shards still stream.

    Args:
        shards: a shard specification (brace pattern, glob, folder/prefix or URL-list file: see
            `dpiqa.list_shards`) or an explicit list of shard URLs.
        score_field: the score's key in the `.json` member; dots descend into nested objects
            (`quality.mos`).
        mos_scale: the top of the score's scale (training regresses `mos / mos_scale`).
        require_score: skip samples without a score (True) or yield them with `mos` NaN (False).
        storage_options: fsspec options for the shards.
    """

    dataset = "webdataset"

    def __init__(
        self,
        shards: str | Sequence[str],
        score_field: str = "mos",
        mos_scale: float = 100.0,
        require_score: bool = True,
        storage_options: dict | None = None,
    ) -> None:
        if mos_scale <= 0:
            raise ValueError(f"mos_scale must be positive, got {mos_scale}")
        self.urls = list_shards(shards, storage_options).urls if isinstance(shards, str) else sorted(set(shards))
        if not self.urls:
            raise ValueError("no shards given")
        self.score_field = score_field
        self.mos_scale = float(mos_scale)
        self.require_score = require_score
        self.storage_options = storage_options
        self.skipped: Counter[str] = Counter()

    def shards_for(self, rank: int, world_size: int) -> list[str]:
        """This worker's share of the shards (`urls[rank::world_size]`, the same on every run)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        return self.urls[rank::world_size]

    def __iter__(self) -> Iterator[LabeledSample]:
        for url in self.urls:
            yield from self.iter_shard(url)

    def iter_shard(self, url: str) -> Iterator[LabeledSample]:
        """The labelled samples of one shard, in tar order."""
        index = -1
        try:
            with shard_samples(url, self.storage_options) as samples:
                for index, sample in enumerate(samples):
                    labeled = self._label(url, sample, index)
                    if labeled is not None:
                        yield labeled
        except Exception as exc:  # one unreadable shard must not stop the others
            self._skip(SHARD_FAILED, url, None, f"stopped reading after sample {index}: {type(exc).__name__}: {exc}")

    def _label(self, url: str, sample: Any, index: int) -> LabeledSample | None:
        if sample.status != schema.OK:
            return self._skip(sample.status, url, sample.key, sample.error)
        ext, image = sample.image_member()
        raw = sample.members.get("json")
        if raw is None:
            if self.require_score:
                return self._skip(NO_JSON, url, sample.key, "no .json member")
            return LabeledSample(url, sample.key, ext, image, math.nan, index)
        try:
            meta = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return self._skip(BAD_JSON, url, sample.key, f".json is not JSON: {exc}")
        value = _field(meta, self.score_field)
        if value is None:
            if self.require_score:
                return self._skip(NO_SCORE, url, sample.key, f".json has no {self.score_field!r}")
            return LabeledSample(url, sample.key, ext, image, math.nan, index)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return self._skip(BAD_SCORE, url, sample.key, f"{self.score_field} = {value!r} is not a finite number")
        return LabeledSample(url, sample.key, ext, image, float(value), index)

    def _skip(self, reason: str, url: str, key: str | None, detail: str | None) -> None:
        self.skipped[reason] += 1
        log.warning("%s: sample %s skipped (%s): %s", url, key, reason, detail)
        return None


def _field(meta: Any, dotted: str) -> Any:
    """`meta["a"]["b"]` for `a.b`, or None where the path does not exist."""
    for part in dotted.split("."):
        if not isinstance(meta, dict) or part not in meta:
            return None
        meta = meta[part]
    return meta


def load(
    root: str | Sequence[str],
    score_field: str = "mos",
    mos_scale: float = 100.0,
    require_score: bool = True,
    storage_options: dict | None = None,
) -> LabeledShards:
    """Labelled WebDataset shards (see `LabeledShards`); `root` is the shard specification."""
    return LabeledShards(
        root, score_field=score_field, mos_scale=mos_scale, require_score=require_score, storage_options=storage_options
    )
