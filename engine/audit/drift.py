"""Drift of a run's score distribution against a baseline run: a population-stability index over the
baseline's decile bins and a two-sample Kolmogorov-Smirnov test, both from histograms on one grid.

Both are computed from the two runs' histograms on a shared fine grid (`stats.Grid`, 2048 equal bins
over the union of both runs' score ranges), never from the rows themselves, so they cost nothing per
row and work at any size.

- PSI = sum over bins of `(p_cur - p_base) * ln(p_cur / p_base)`. Bins are the baseline's deciles
  (cut where its CDF crosses 0.1, ..., 0.9, snapped to the fine grid), plus one bin below and one
  above the baseline's observed range, so mass that moves outside it is never merged into an edge
  bin. Empty proportions are floored at 1e-4 (the usual convention; otherwise one empty bin makes the
  index infinite). Reading: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift.
- KS: D = the largest gap between the two CDFs over the fine grid's bin edges (the binned statistic:
  it can miss at most the mass inside one bin), p-value from the asymptotic Kolmogorov distribution
  with n = n1 n2 / (n1 + n2). With millions of rows even negligible shifts are "significant"; the
  alert therefore uses PSI, and KS is reported alongside it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import kolmogorov

from dpiqa.engine.audit.stats import Grid

PSI_FLOOR = 1e-4
DECILES = tuple(q / 10 for q in range(1, 10))


def psi_bins(base: np.ndarray) -> np.ndarray:
    """Fine-grid indices where the PSI bins start (the first is 0), from the baseline's histogram."""
    total = base.sum()
    n = len(base)
    if total == 0:
        return np.array([0])
    cdf = np.cumsum(base) / total
    nonzero = np.flatnonzero(base)
    # A decile q falls in the first fine bin whose CDF reaches q; cut after that bin.
    cuts = np.searchsorted(cdf, np.asarray(DECILES) - 1e-12, side="left") + 1
    starts = np.unique(np.concatenate([[0, nonzero[0], nonzero[-1] + 1], cuts]))
    return starts[starts < n]


def psi(current: np.ndarray, base: np.ndarray) -> tuple[float, list[dict]]:
    """Population-stability index of `current` against `base` (fine-grid counts).

    Returns:
        `(psi, bins)`: the index and, per bin, its fine-grid range and both proportions.
    """
    starts = psi_bins(base)
    cur = np.add.reduceat(current, starts).astype(np.float64)
    ref = np.add.reduceat(base, starts).astype(np.float64)
    p = np.maximum(cur / max(cur.sum(), 1), PSI_FLOOR)
    q = np.maximum(ref / max(ref.sum(), 1), PSI_FLOOR)
    terms = (p - q) * np.log(p / q)
    ends = np.append(starts[1:], len(base))
    bins = [
        {"start_bin": int(s), "end_bin": int(e), "current": float(a), "baseline": float(b), "term": float(t)}
        for s, e, a, b, t in zip(starts, ends, p, q, terms, strict=True)
    ]
    return float(terms.sum()), bins


def ks(current: np.ndarray, base: np.ndarray) -> tuple[float, float | None, int]:
    """Two-sample KS statistic over the grid, its asymptotic p-value, and the bin where the gap is largest."""
    n1, n2 = int(current.sum()), int(base.sum())
    if n1 == 0 or n2 == 0:
        return 0.0, None, 0
    gap = np.abs(np.cumsum(current) / n1 - np.cumsum(base) / n2)
    at = int(np.argmax(gap))
    d = float(gap[at])
    n = n1 * n2 / (n1 + n2)
    # Stephens' small-sample correction of the asymptotic distribution.
    p_value = float(kolmogorov((math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d))
    return d, p_value, at


def drift(grid: Grid, current: np.ndarray, base: np.ndarray) -> dict:
    """PSI and KS of two fine-grid histograms, as a JSON-ready dict."""
    index, bins = psi(current, base)
    edges = grid.edges()
    for b in bins:
        b["lo"], b["hi"] = float(edges[b.pop("start_bin")]), float(edges[b.pop("end_bin")])
    d, p_value, at = ks(current, base)
    return {
        "psi": index,
        "psi_bins": bins,
        "ks_statistic": d,
        "ks_pvalue": p_value,
        "ks_at_score": float(edges[at + 1]),
        "method": "PSI over the baseline's decile bins (+ one bin each side of its range, proportions floored "
        f"at {PSI_FLOOR}); two-sample KS on a {grid.bins}-bin grid (binned, asymptotic p-value)",
    }
