"""Streaming statistics of score rows: counts by status, exact min/max, a fixed-grid histogram, group
aggregates and the lowest/highest scored rows, all mergeable batch by batch in bounded memory."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dpiqa.engine import schema

# Quantiles reported by the audit (fractions of the ok rows).
QUANTILES = (0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99)


@dataclass(frozen=True)
class Grid:
    """Equal-width bins over `[lo, hi]`, shared by a run and its baseline so their histograms compare
    bin for bin. With the default 2048 bins a quantile read from the histogram is within one bin
    width, `(hi - lo) / 2048`, of the exact one (0.05 % of the score range).

    Args:
        lo: left edge of the first bin.
        hi: right edge of the last bin (included in it, as in `np.histogram`).
        bins: number of bins.
    """

    lo: float
    hi: float
    bins: int = 2048

    @classmethod
    def around(cls, lo: float | None, hi: float | None, bins: int = 2048) -> Grid:
        """A grid covering `[lo, hi]`, widened when the range is empty (all scores equal) or unknown."""
        if lo is None or hi is None:
            return cls(0.0, 1.0, bins)
        if hi <= lo:
            pad = max(abs(lo) * 1e-3, 1e-3)
            return cls(lo - pad, hi + pad, bins)
        return cls(float(lo), float(hi), bins)

    @property
    def width(self) -> float:
        return (self.hi - self.lo) / self.bins

    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, self.bins + 1)

    def histogram(self, values: np.ndarray) -> np.ndarray:
        # Clipped so that every value is counted even if it lies a rounding error outside the range.
        counts, _ = np.histogram(np.clip(values, self.lo, self.hi), bins=self.bins, range=(self.lo, self.hi))
        return counts.astype(np.int64)


def quantiles(grid: Grid, counts: np.ndarray, qs: tuple[float, ...], vmin: float, vmax: float) -> dict[str, float]:
    """Quantiles from a histogram, interpolated linearly inside the bin that holds them and clipped to
    the exact `[vmin, vmax]`. Off by at most one bin width."""
    total = int(counts.sum())
    if total == 0:
        return {}
    cdf = np.cumsum(counts)
    out = {}
    for q in qs:
        target = q * total
        i = int(np.searchsorted(cdf, target, side="left"))
        i = min(i, grid.bins - 1)
        before = cdf[i - 1] if i > 0 else 0
        inside = counts[i]
        frac = (target - before) / inside if inside else 0.0
        value = grid.lo + (i + frac) * grid.width
        out[f"p{round(q * 100):02d}"] = float(min(max(value, vmin), vmax))
    return out


@dataclass
class Aggregate:
    """Counts and moments of a group of rows (a run, a shard, a source). Mergeable.

    `ok` counts rows with status `ok` (and a score); `sum`/`sumsq`/`min`/`max` are over their scores.
    """

    rows: int = 0
    ok: int = 0
    statuses: Counter = field(default_factory=Counter)
    sum: float = 0.0
    sumsq: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def merge(self, other: Aggregate) -> None:
        self.rows += other.rows
        self.ok += other.ok
        self.statuses.update(other.statuses)
        self.sum += other.sum
        self.sumsq += other.sumsq
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    @property
    def errors(self) -> int:
        return self.rows - self.statuses.get(schema.OK, 0)

    @property
    def error_rate(self) -> float:
        return self.errors / self.rows if self.rows else 0.0

    @property
    def mean(self) -> float | None:
        return self.sum / self.ok if self.ok else None

    @property
    def std(self) -> float | None:
        if not self.ok:
            return None
        mean = self.sum / self.ok
        return math.sqrt(max(self.sumsq / self.ok - mean * mean, 0.0))

    def to_dict(self) -> dict:
        return {
            "rows": self.rows,
            "ok": self.ok,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "statuses": dict(sorted(self.statuses.items())),
            "mean": self.mean,
            "std": self.std,
            "min": self.min if self.ok else None,
            "max": self.max if self.ok else None,
        }


def aggregate(status: pa.Array, scores: np.ndarray, ok: np.ndarray) -> Aggregate:
    """The aggregate of one batch: `status` (arrow strings), `scores` float64 and the `ok` mask."""
    good = scores[ok]
    counts = pc.value_counts(status)
    statuses = Counter(
        {
            str(v): int(c)
            for v, c in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
        }
    )
    return Aggregate(
        rows=len(status),
        ok=int(ok.sum()),
        statuses=statuses,
        sum=float(good.sum()),
        sumsq=float(np.dot(good, good)),
        min=float(good.min()) if len(good) else math.inf,
        max=float(good.max()) if len(good) else -math.inf,
    )


def group_aggregates(groups: pa.Array, status: pa.Array, scores: np.ndarray, ok: np.ndarray) -> dict[str, Aggregate]:
    """Aggregates of one batch per value of `groups` (a `source` column), with pyarrow's group-by."""
    score_ok = pa.array(scores, mask=~ok)
    table = pa.table(
        {
            "g": pc.cast(groups, pa.string()).fill_null(""),
            "status": status,
            "score": score_ok,
            "score2": pc.multiply(score_ok, score_ok),
            "ok": pa.array(ok.astype(np.int64)),
        }
    )
    moments = (
        table.group_by("g")
        .aggregate(
            [
                ("score", "sum"),
                ("score2", "sum"),
                ("score", "min"),
                ("score", "max"),
                ("ok", "sum"),
                ("g", "count"),
            ]
        )
        .to_pylist()
    )
    out = {}
    for m in moments:
        out[m["g"]] = Aggregate(
            rows=m["g_count"],
            ok=m["ok_sum"],
            sum=m["score_sum"] or 0.0,
            sumsq=m["score2_sum"] or 0.0,
            min=m["score_min"] if m["score_min"] is not None else math.inf,
            max=m["score_max"] if m["score_max"] is not None else -math.inf,
        )
    for row in table.group_by(["g", "status"]).aggregate([("status", "count")]).to_pylist():
        out[row["g"]].statuses[row["status"]] += row["status_count"]
    return out


@dataclass(order=True)
class Extreme:
    """A scored row among the lowest or highest: ordered by score, then shard name, then index."""

    score: float
    shard: str  # output name of the shard (scores/NAME.parquet)
    index: int
    url: str = field(compare=False, default="")
    key: str | None = field(compare=False, default=None)


class Extremes:
    """The `k` lowest (or highest) scored rows seen so far, ties broken by (shard name, index) so that
    the result does not depend on the order batches arrive in.

    Args:
        k: how many rows to keep.
        highest: keep the highest scores instead of the lowest.
    """

    def __init__(self, k: int, highest: bool = False) -> None:
        self.k, self.highest = k, highest
        self.items: list[Extreme] = []

    def add(self, shard: str, url: str, scores: np.ndarray, index: np.ndarray) -> None:
        """Offer the ok rows of one batch of one shard (`scores` and their `index`)."""
        if self.k == 0 or len(scores) == 0:
            return
        order_by = -scores if self.highest else scores
        if len(order_by) > self.k:
            # Everything strictly better than the k-th value, then the ties at it by index.
            kth = np.partition(order_by, self.k - 1)[self.k - 1]
            better = np.flatnonzero(order_by < kth)
            ties = np.flatnonzero(order_by == kth)
            ties = ties[np.argsort(index[ties], kind="stable")][: self.k - len(better)]
            take = np.concatenate([better, ties])
        else:
            take = np.arange(len(order_by))
        self.items.extend(Extreme(float(order_by[i]), shard, int(index[i]), url) for i in take)
        self.items.sort()
        del self.items[self.k :]

    def merge(self, other: Extremes) -> None:
        """Keep the best `k` of both (the same rows as if every batch had been offered here)."""
        self.items = sorted(self.items + other.items)[: self.k]

    def rows(self) -> list[Extreme]:
        """The kept rows, best first (lowest first, or highest first), with their true scores."""
        sign = -1.0 if self.highest else 1.0
        return [Extreme(sign * e.score, e.shard, e.index, e.url, e.key) for e in self.items]


class RunStats:
    """Everything the audit computes over one run, fed batch by batch.

    Memory is bounded by the grid, the `k` extremes and one aggregate per shard and per source; it
    does not grow with the number of rows.

    Args:
        grid: histogram bins (shared with the baseline).
        extremes: how many lowest and highest rows to keep (0: none).
        groups: keep per-shard and per-source aggregates.
    """

    def __init__(self, grid: Grid, extremes: int = 0, groups: bool = True) -> None:
        self.grid = grid
        self.total = Aggregate()
        self.counts = np.zeros(grid.bins, dtype=np.int64)
        self.lowest = Extremes(extremes)
        self.highest = Extremes(extremes, highest=True)
        self.groups = groups
        self.per_shard: dict[str, Aggregate] = {}
        self.per_source: dict[str, Aggregate] = {}
        self.shard_source: dict[str, str] = {}

    def add(self, shard: str, url: str, batch: pa.RecordBatch, source: str | None = None) -> None:
        """Add one batch of one shard.

        Args:
            shard: the shard's output name.
            url: the shard's URL (for reading thumbnails back).
            batch: columns `score`, `status`, `index` and, optionally, `source`.
            source: the batch's source when the rows carry no `source` column.
        """
        status = batch.column("status")
        if pa.types.is_dictionary(status.type):
            status = status.dictionary_decode()
        score_col = batch.column("score")
        scores = score_col.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls become NaN
        ok = pc.equal(status, schema.OK).to_numpy(zero_copy_only=False) & np.isfinite(scores)
        agg = aggregate(status, scores, ok)
        self.total.merge(agg)
        good = scores[ok]
        self.counts += self.grid.histogram(good)
        if self.lowest.k:
            index = batch.column("index").to_numpy()[ok]
            self.lowest.add(shard, url, good, index)
            self.highest.add(shard, url, good, index)
        if not self.groups:
            return
        self.per_shard.setdefault(shard, Aggregate()).merge(agg)
        if "source" in batch.schema.names:
            for name, group in group_aggregates(batch.column("source"), status, scores, ok).items():
                self.per_source.setdefault(name, Aggregate()).merge(group)
        else:
            self.per_source.setdefault(source or "", Aggregate()).merge(agg)
            self.shard_source[shard] = source or ""

    def merge(self, other: RunStats) -> None:
        """Add the statistics of other rows on the same grid (a scan split over workers, merged): counts
        and moments add, extremes keep the best of both, groups merge by name."""
        if other.grid != self.grid:
            raise ValueError("statistics on different grids cannot be merged")
        self.total.merge(other.total)
        self.counts += other.counts
        self.lowest.merge(other.lowest)
        self.highest.merge(other.highest)
        for mine, theirs in ((self.per_shard, other.per_shard), (self.per_source, other.per_source)):
            for name, agg in theirs.items():
                mine.setdefault(name, Aggregate()).merge(agg)
        self.shard_source.update(other.shard_source)

    def quantiles(self) -> dict[str, float]:
        return quantiles(self.grid, self.counts, QUANTILES, self.total.min, self.total.max)
