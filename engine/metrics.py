"""Image-quality metrics: SRCC, KRCC, PLCC and RMSE (raw and after the 4-parameter logistic fit), summaries."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats

log = logging.getLogger(__name__)


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """The VQEG 4-parameter logistic `(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2`.

    Written with `expit` (the same function, without overflow in `exp` far from `b3`).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return (b1 - b2) * scipy.special.expit((np.asarray(x, dtype=np.float64) - b3) / np.abs(b4)) + b2


@dataclass(frozen=True)
class MosMapping:
    """The monotone mapping from predictions to MOS fitted before PLCC and RMSE (VQEG practice).

    Args:
        method: `logistic` (the 4-parameter fit), `linear` (the fallback: a least-squares line) or
            `constant` (predictions without spread: the mean MOS).
        params: the logistic's `(b1, b2, b3, b4)`, the line's `(slope, intercept)`, or `(mean,)`.
    """

    method: str
    params: tuple[float, ...]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.method == "logistic":
            return logistic4(x, *self.params)
        if self.method == "linear":
            return self.params[0] * x + self.params[1]
        return np.full_like(x, self.params[0])


def fit_logistic(pred: np.ndarray, mos: np.ndarray, maxfev: int = 10_000) -> MosMapping:
    """Fit the 4-parameter logistic from predictions to MOS, falling back to a line when it fails.

    Initial values follow common practice: `b1`, `b2` the MOS maximum and minimum (swapped when the
    predictions fall as the MOS rises, so the curve starts out decreasing), `b3` the mean prediction,
    `b4` the predictions' standard deviation. The fit falls back to a least-squares line on fewer than
    4 points, when `curve_fit` does not converge, returns non-finite values, or ends worse than that line (a
    logistic with large `|b4|` is a line, so a worse logistic is a fit stuck in a flat region).

    Args:
        pred: the model's predictions, any monotone scale.
        mos: the human scores.
        maxfev: the most function evaluations `curve_fit` may use.
    """
    pred = np.asarray(pred, dtype=np.float64)
    mos = np.asarray(mos, dtype=np.float64)
    if np.ptp(pred) == 0:
        return MosMapping("constant", (float(mos.mean()),))
    slope, intercept = np.polyfit(pred, mos, 1)
    line = MosMapping("linear", (float(slope), float(intercept)))
    if len(pred) < 4:  # fewer points than the curve has parameters: curve_fit refuses them
        return line
    rising = scipy.stats.spearmanr(pred, mos).statistic >= 0
    p0 = [mos.max(), mos.min(), pred.mean(), pred.std()] if rising else [mos.min(), mos.max(), pred.mean(), pred.std()]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.optimize.OptimizeWarning)  # covariance not estimable
            params, _ = scipy.optimize.curve_fit(logistic4, pred, mos, p0=p0, maxfev=maxfev)
    except (RuntimeError, ValueError) as exc:
        log.info("logistic fit failed (%s); using a linear fit", exc)
        return line
    fit = MosMapping("logistic", tuple(float(p) for p in params))
    fitted = fit(pred)
    if not np.all(np.isfinite(fitted)) or _sse(fitted, mos) > _sse(line(pred), mos):
        log.info("logistic fit ended worse than a line; using the linear fit")
        return line
    return fit


def _sse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum((a - b) ** 2))


def _corr(fn, a: np.ndarray, b: np.ndarray) -> float:  # a scipy.stats correlation
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")  # undefined without spread (an untrained model can predict a constant)
    return float(fn(a, b).statistic)


def compute_metrics(pred: Sequence[float] | np.ndarray, mos: Sequence[float] | np.ndarray) -> dict:
    """All metrics of predictions against MOS.

    Args:
        pred: predictions in MOS units (a model's score times the dataset's `mos_scale`), so that the
            raw RMSE is in MOS units; the correlations and fitted metrics accept any scale.
        mos: the human scores.

    Returns:
        `srcc`, `krcc` (Kendall's tau-b, which accounts for ties), `plcc` (raw), `plcc_logistic` and
        `rmse_logistic` (after mapping predictions through `fit_logistic`), `rmse` (raw), `n`, and
        `fit` (the mapping's method). Correlations are NaN when either side has no spread.

    Raises:
        ValueError: on different lengths, fewer than 3 values, or non-finite values.
    """
    pred = np.asarray(pred, dtype=np.float64).ravel()
    mos = np.asarray(mos, dtype=np.float64).ravel()
    if pred.shape != mos.shape:
        raise ValueError(f"{len(pred)} predictions for {len(mos)} MOS values")
    if len(pred) < 3:
        raise ValueError(f"metrics need at least 3 images, got {len(pred)}")
    bad = int(np.sum(~np.isfinite(pred)) + np.sum(~np.isfinite(mos)))
    if bad:
        raise ValueError(f"{bad} non-finite values among the predictions and MOS")
    mapping = fit_logistic(pred, mos)
    fitted = mapping(pred)
    return {
        "srcc": _corr(scipy.stats.spearmanr, pred, mos),
        "krcc": _corr(scipy.stats.kendalltau, pred, mos),
        "plcc": _corr(scipy.stats.pearsonr, pred, mos),
        "plcc_logistic": _corr(scipy.stats.pearsonr, fitted, mos),
        "rmse": float(np.sqrt(np.mean((pred - mos) ** 2))),
        "rmse_logistic": float(np.sqrt(np.mean((fitted - mos) ** 2))),
        "n": len(pred),
        "fit": mapping.method,
    }


def summarize(results: Sequence[Mapping[str, object]]) -> dict[str, dict[str, float]]:
    """Median and spread of each metric over repeated splits (the median is the reported number).

    Args:
        results: one `compute_metrics` result per split; non-numeric entries (`fit`) are left out.

    Returns:
        For each numeric metric: `median`, `mean`, `std` (sample standard deviation, 0 for one
        split), `min`, `max` and `n` (the number of splits). A NaN in any split makes that metric's
        summary NaN rather than hiding the failed split.
    """
    if not results:
        raise ValueError("no results to summarize")
    keys = [k for k, v in results[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    summary = {}
    for key in keys:
        values = np.asarray([float(r[key]) for r in results], dtype=np.float64)
        summary[key] = {
            "median": float(np.median(values)),
            "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "min": float(np.min(values)),
            "max": float(np.max(values)),
            "n": len(values),
        }
    return summary
