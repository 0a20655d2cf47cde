"""Evaluation: a model's predictions on a labelled set, and SRCC/KRCC/PLCC/RMSE against its MOS."""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dpiqa.engine.datasets import LabeledSet
from dpiqa.engine.metrics import compute_metrics
from dpiqa.engine.progress import Progress
from dpiqa.engine.stages.decode import Decoded, DecodeError, decode_image
from dpiqa.models.scorer import Scorer
from dpiqa.storage import get_fs, retry

log = logging.getLogger(__name__)


def predict(
    scorer: Scorer,
    labeled: LabeledSet,
    indices: np.ndarray,
    batch_size: int = 32,
    storage_options: dict | None = None,
    decoders: int = 4,
) -> np.ndarray:
    """Scores (MOS units) of `labeled[indices]`; NaN for an image that cannot be read or decoded.

    Images are read and decoded by a thread pool (PIL and fsspec release the GIL) one batch ahead of
    the model.
    """
    out = np.full(len(indices), np.nan, dtype=np.float64)
    progress = Progress("eval", len(indices), unit="images", done_unit="images")

    def load(i: int) -> Decoded | None:
        item = labeled[int(i)]
        try:
            fs, path = get_fs(item.path, storage_options)
            return decode_image(retry(lambda: fs.cat_file(path), f"read {item.path}"), scorer.preprocessing)
        except (DecodeError, OSError) as exc:
            log.warning("eval: %s not scored: %s", item.path, exc)
            return None

    with ThreadPoolExecutor(decoders) as pool:
        starts = range(0, len(indices), batch_size)
        futures = {s: pool.map(load, indices[s : s + batch_size]) for s in starts[:2]}
        for n, s in enumerate(starts):
            images = list(futures.pop(s))
            if n + 2 < len(starts):
                nxt = starts[n + 2]
                futures[nxt] = pool.map(load, indices[nxt : nxt + batch_size])
            ok = [j for j, im in enumerate(images) if im is not None]
            if ok:
                batch = np.stack([images[j].pixels for j in ok])
                statistics = np.stack([images[j].statistics for j in ok])
                out[[s + j for j in ok]] = scorer(batch, statistics=statistics).scores
            progress.update(0, s + len(images), force=s + len(images) == len(indices))
    return out


def evaluate(
    scorer: Scorer, labeled: LabeledSet, indices: np.ndarray, batch_size: int = 32, storage_options: dict | None = None
) -> dict:
    """Metrics of `scorer` on `labeled[indices]` (images that fail to decode are left out and counted)."""
    pred = predict(scorer, labeled, indices, batch_size, storage_options)
    mos = labeled.mos[indices]
    keep = np.isfinite(pred)
    metrics = compute_metrics(pred[keep], mos[keep])
    metrics["unscored"] = int((~keep).sum())
    # A correlation is undefined where the scores or the MOS are all equal (a constant model, one label):
    # None (JSON null, "n/a" in tables), never NaN, which JSON does not have.
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}


def shown(value: float | None, digits: int = 4) -> str:
    """A metric as tables show it: `0.9123`, or `n/a` where it is undefined."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def split_indices(
    labeled: LabeledSet,
    card: dict,
    dataset: str,
    part: str,
    seed: int | None = None,
    fractions: tuple[float, ...] | None = None,
    grouped: bool | None = None,
    fallback_all: bool = False,
) -> tuple[np.ndarray, dict]:
    """The images of `part` of a dataset for a model: the split its card recorded when it was trained on
    this dataset (so `test` is what training never saw), else the given seed, else (with
    `fallback_all`, for cross-dataset evaluation) every image.

    Raises:
        ValueError: a split part was asked for, the card records none and no seed is given.
    """
    from dpiqa.engine.splits import make_split

    training = card.get("training") or {}
    recorded = training.get("split") if training.get("dataset") == dataset else None
    if part == "all" or (recorded is None and seed is None and fallback_all):
        return np.arange(len(labeled)), {"part": "all"}
    if seed is None and recorded is None:
        raise ValueError(
            f"the model's card records no split of {dataset}; pass --seed (and --fractions) or use --split all"
        )
    seed = seed if seed is not None else recorded["seed"]
    fractions = tuple(fractions or (recorded["fractions"] if recorded else (0.7, 0.1, 0.2)))
    grouped = grouped if grouped is not None else bool(recorded and recorded.get("grouped"))
    split = make_split(labeled.names, seed, fractions, groups=labeled.groups, grouped=grouped)
    return split.part(part), {"part": part, "seed": seed, "fractions": list(fractions), "grouped": grouped}


def matrix_markdown(results: list[dict], title: str) -> str:
    """A train-on-A / test-on-B table: one row per model (with the dataset it was trained on), one column
    per evaluated dataset, each cell `SRCC / PLCC (part, n)`."""
    datasets = list(dict.fromkeys(r["dataset_label"] for r in results))
    models = list(dict.fromkeys(r["model_label"] for r in results))
    cells = {(r["model_label"], r["dataset_label"]): r for r in results}
    lines = [
        f"# {title}",
        "",
        "| model (trained on) | " + " | ".join(datasets) + " |",
        "| --- |" + " --- |" * len(datasets),
    ]
    for m in models:
        row = []
        for d in datasets:
            r = cells.get((m, d))
            if r is None:
                row.append("-")
                continue
            met = r["metrics"]
            row.append(f"{shown(met['srcc'])} / {shown(met['plcc'])} ({r['split']['part']}, n={met['n']})")
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    lines += [
        "",
        "Cells: SRCC / PLCC on the part of the dataset named in the cell (without `--seed`, the test "
        "split the model's card records when it was trained on that dataset, every image otherwise).",
    ]
    return "\n".join(lines) + "\n"
