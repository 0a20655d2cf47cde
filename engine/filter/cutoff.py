"""Which scored rows a filter keeps: `min_score_cutoff` or the exact `top_fraction_cutoff` (a streaming
radix selection over sortable 32-bit score keys, ties kept in (shard name, index) order)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pyarrow as pa

from dpiqa.engine import schema
from dpiqa.engine.scores import ScoredRun, ScoredShard


def sortable(scores: np.ndarray) -> np.ndarray:
    """float32 scores -> uint32 keys in the same order (IEEE bits with the sign folded), so that an exact
    rank can be found with two 16-bit radix histograms."""
    # `+ 0` turns -0.0 into +0.0: they compare equal as floats and must get the same key.
    bits = (np.ascontiguousarray(scores, dtype=np.float32) + np.float32(0)).view(np.uint32)
    return np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))


def unsortable(key: int) -> float:
    bits = key & 0x7FFFFFFF if key & 0x80000000 else ~key & 0xFFFFFFFF
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


@dataclass
class Cutoff:
    """The rule that keeps a row: status `ok` and sortable score key above `key`, or equal to it and
    among the first `ties[shard]` such rows of its shard (by index).

    `min_score` runs keep every tie (`ties` is None); `top_fraction` runs keep exactly `kept` rows.
    """

    key: int
    score: float | None  # None: nothing is kept (no ok row)
    inclusive: bool = True  # rows equal to `key` are kept (all of them when `ties` is None)
    ties: dict[str, int] | None = None
    kept: int | None = None
    total: int | None = None

    def identity(self) -> dict:
        return {"score": self.score, "kept": self.kept, "total": self.total}

    def keep(
        self, name: str, status: np.ndarray, scores: np.ndarray, valid: np.ndarray, index: np.ndarray
    ) -> np.ndarray:
        """Mask of the kept rows of shard `name`."""
        ok = (status == schema.OK) & valid
        keys = sortable(np.where(ok, scores, np.float32(0)))
        above = ok & (keys > self.key)
        equal = ok & (keys == self.key)
        if self.ties is None:
            return above | equal if self.inclusive else above
        quota = self.ties.get(name, 0)
        tied = np.flatnonzero(equal)
        tied = tied[np.argsort(index[tied], kind="stable")][:quota]
        mask = above.copy()
        mask[tied] = True
        return mask


def min_score_cutoff(min_score: float) -> Cutoff:
    """Keep ok rows whose float32 score is >= `min_score` (compared as float64, as the user typed it)."""
    # The smallest float32 >= min_score, so that the integer-key comparison matches `score >= min_score`.
    f = np.float32(min_score)
    if float(f) < min_score:
        f = np.nextafter(f, np.float32(np.inf))
    return Cutoff(key=int(sortable(np.array([f]))[0]), score=float(f))


def _ok_keys(batch: pa.RecordBatch) -> np.ndarray:
    status = batch.column("status")
    if pa.types.is_dictionary(status.type):
        status = status.dictionary_decode()
    scores = batch.column("score")
    ok = (status.to_numpy(zero_copy_only=False) == schema.OK) & scores.is_valid().to_numpy(zero_copy_only=False)
    return sortable(scores.to_numpy(zero_copy_only=False)[ok])


def top_fraction_cutoff(run: ScoredRun, shards: list[ScoredShard], fraction: float) -> Cutoff:
    """The exact cut that keeps the `ceil(fraction * N)` highest of the N ok scores of `shards`.

    Radix selection on the sortable 32-bit keys, streaming: pass 1 counts the high 16 bits, pass 2 the low
    16 bits within the one high bucket that holds the cut, pass 3 counts each shard's rows at the cut so
    that ties are kept in (shard name, index) order. Memory: two 65,536-bin histograms and a count per
    shard, whatever the number of rows.
    """
    columns = ["score", "status"]
    high = np.zeros(1 << 16, dtype=np.int64)
    for _, batch in run.batches(columns, shards=shards):
        high += np.bincount(_ok_keys(batch) >> 16, minlength=1 << 16)
    total = int(high.sum())
    # Exactly ceil(F x N) for the F the user typed: through its decimal text, not its binary float (0.3 x 10
    # is 3.0000000000000004 in floats, and rounding that away would make 1e-12 x 3 zero).
    want = min(total, math.ceil(Fraction(repr(fraction)) * total))
    if want == 0:
        return Cutoff(key=0xFFFFFFFF, score=None, inclusive=False, ties={}, kept=0, total=total)
    above_high = np.cumsum(high[::-1])[::-1] - high  # rows in buckets above each bucket
    bucket = int(np.flatnonzero((above_high < want) & (above_high + high >= want))[-1])
    low = np.zeros(1 << 16, dtype=np.int64)
    for _, batch in run.batches(columns, shards=shards):
        keys = _ok_keys(batch)
        low += np.bincount(keys[(keys >> 16) == bucket] & 0xFFFF, minlength=1 << 16)
    need = want - int(above_high[bucket])
    above_low = np.cumsum(low[::-1])[::-1] - low
    slot = int(np.flatnonzero((above_low < need) & (above_low + low >= need))[-1])
    key = (bucket << 16) | slot
    ties_wanted = need - int(above_low[slot])
    tie_counts: dict[str, int] = {}
    for shard, batch in run.batches(columns, shards=shards):
        n = int(np.count_nonzero(_ok_keys(batch) == key))
        if n:
            tie_counts[shard.name] = tie_counts.get(shard.name, 0) + n
    ties = {}
    for name in sorted(tie_counts):
        take = min(tie_counts[name], ties_wanted)
        if take:
            ties[name] = take
        ties_wanted -= take
    return Cutoff(key=key, score=unsortable(key), ties=ties, kept=want, total=total)
