"""The audit's JSON document: summary, histograms, drift against a baseline, per-shard table and thumbnails."""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

import numpy as np

from dpiqa.engine.audit import drift
from dpiqa.engine.audit.config import PLOT_BINS, AuditConfig
from dpiqa.engine.audit.stats import Extreme, Grid, RunStats
from dpiqa.engine.audit.thumbnails import read_thumbnails
from dpiqa.engine.scores import ScoredRun
from dpiqa.storage import get_fs, retry
from dpiqa.version import code_version

DOC_VERSION = 1


def document(
    config: AuditConfig,
    run: ScoredRun,
    stats: RunStats,
    base: ScoredRun | None,
    base_stats: RunStats | None,
    base_label: str | None = None,
) -> dict:
    """The audit's JSON document (everything the page shows, and the data behind every plot)."""
    total = stats.total
    manifest = run.manifest or {}
    doc: dict = {
        "version": DOC_VERSION,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "scores": config.scores,
        "model": run.identity(),
        "shards": {
            "completed": len(run.shards),
            "failed_in_run": len(manifest["failed_shards"]) if "failed_shards" in manifest else None,
            "failed": manifest.get("failed_shards", {}),
        },
        "summary": _summary(total),
        "statuses": [
            {"status": s, "count": c, "rate": c / total.rows if total.rows else 0.0}
            for s, c in sorted(total.statuses.items(), key=lambda t: (-t[1], t[0]))
        ],
        "quantiles": stats.quantiles(),
        "histogram": _histogram(stats.grid, stats.counts),
        "per_shard": worst_and_best(per_shard_rows(run, stats), PER_SHARD_SHOWN),
        "per_shard_table": {"shards": len(stats.per_shard), "shown": None, "file": None},
        "per_source": [{"source": k, **v.to_dict()} for k, v in sorted(stats.per_source.items())],
        "baseline": None,
        "per_source_vs_baseline": [],
        "drift": None,
        "thresholds": {
            "max_error_rate": config.max_error_rate,
            "max_drift": config.max_drift if base is not None or config.baseline_json else None,
        },
        "thumbnails": {"lowest": [], "highest": []},
    }
    plot = {
        "edges": np.linspace(stats.grid.lo, stats.grid.hi, PLOT_BINS + 1).tolist(),
        "counts": _coarse(stats.counts).tolist(),
        "baseline": None,
    }
    if base is not None and base_stats is not None:
        ours, theirs = run.identity(), base.identity()
        doc["baseline"] = {
            "scores": base_label,
            "model": theirs,
            "same_model": ours.get("checkpoint_hash") == theirs.get("checkpoint_hash"),
            "shards": {"completed": len(base.shards)},
            "summary": _summary(base_stats.total),
            "quantiles": base_stats.quantiles(),
            "histogram": _histogram(base_stats.grid, base_stats.counts),
            "per_source": [{"source": k, **v.to_dict()} for k, v in sorted(base_stats.per_source.items())],
        }
        doc["per_source_vs_baseline"] = per_source_comparison(doc["per_source"], doc["baseline"]["per_source"])
        if total.ok and base_stats.total.ok:
            doc["drift"] = drift.drift(stats.grid, stats.counts, base_stats.counts)
        plot["baseline"] = _coarse(base_stats.counts).tolist()
    # Where each plot of the page takes its data from in this document.
    sources = {
        "plot-histogram": "figures.histogram",
        "plot-cdf": "histogram, baseline.histogram",
        "plot-statuses": "statuses",
        "plot-psi": "drift.psi_bins",
        "plot-per-source": "per_source",
        "plot-per-shard": "per_shard",
    }
    doc["figures"] = {"histogram": plot, "sources": sources}
    doc["per_shard_table"]["shown"] = len(doc["per_shard"])
    return doc


def baseline_from_document(doc: dict, stats: RunStats, base: dict, where: str) -> None:
    """Compare with an earlier audit's JSON: its summary and quantiles as they were, its histogram re-binned
    onto this audit's grid (its counts spread evenly within each of its bins) for PSI and KS."""
    h = base.get("histogram") or {}
    if not h.get("counts"):
        raise ValueError(f"{where}: not an audit document with a histogram (made by `dpiqa audit --json`)")
    counts = _rebin(np.asarray(h["counts"], dtype=np.float64), h["lo"], h["hi"], stats.grid)
    doc["baseline"] = {
        "scores": base.get("scores"),
        "document": where,
        "model": base.get("model"),
        "same_model": (doc.get("model") or {}).get("checkpoint_hash")
        == (base.get("model") or {}).get("checkpoint_hash"),
        "shards": base.get("shards"),
        "summary": base.get("summary"),
        "quantiles": base.get("quantiles"),
        "histogram": _histogram(stats.grid, counts),
        "per_source": base.get("per_source"),
    }
    doc["per_source_vs_baseline"] = per_source_comparison(doc["per_source"], base.get("per_source") or [])
    if stats.total.ok and counts.sum() > 0:
        doc["drift"] = drift.drift(stats.grid, stats.counts, counts)
        doc["figures"]["histogram"]["baseline"] = _coarse(counts).tolist()


def _rebin(counts: np.ndarray, lo: float, hi: float, grid: Grid) -> np.ndarray:
    """Counts on `[lo, hi]` in `len(counts)` equal bins -> the same mass on `grid`'s bins (uniform within bins)."""
    edges = np.linspace(lo, hi, len(counts) + 1)
    cumulative = np.concatenate([[0.0], np.cumsum(counts)])
    at = np.interp(grid.edges(), edges, cumulative)
    return np.diff(at)


def per_source_comparison(ours: list[dict], theirs: list[dict]) -> list[dict]:
    """Per source present in both: rows, error rate and mean score now and in the baseline, and the change."""
    base = {s["source"]: s for s in theirs}
    out = []
    for s in ours:
        b = base.get(s["source"])
        if b is None:
            continue
        out.append(
            {
                "source": s["source"],
                "rows": s["rows"],
                "baseline_rows": b["rows"],
                "error_rate": s["error_rate"],
                "baseline_error_rate": b["error_rate"],
                "error_rate_change": s["error_rate"] - b["error_rate"],
                "mean": s["mean"],
                "baseline_mean": b["mean"],
                "mean_change": None if s["mean"] is None or b["mean"] is None else s["mean"] - b["mean"],
            }
        )
    return out


PER_SHARD_SHOWN = 50  # the worst and the best shards the page and the JSON list; every shard: SHARDS_TABLE


def per_shard_rows(run: ScoredRun, stats: RunStats) -> Iterator[dict]:
    """Every audited shard's row of the per-shard table, in name order."""
    for s in run.shards:
        if s.name in stats.per_shard:
            yield {
                "name": s.name,
                "url": s.url,
                "source": stats.shard_source.get(s.name),
                **stats.per_shard[s.name].to_dict(),
            }


def worst_and_best(rows: Iterable[dict], k: int) -> list[dict]:
    """The `k` worst shards (highest error rate, then lowest mean score) and the `k` best (lowest error rate, then
    highest mean), in name order; every shard when there are at most 2k."""
    rows = list(rows)
    if len(rows) <= 2 * k:
        return rows

    def mean(r: dict, missing: float) -> float:
        return r["mean"] if r["mean"] is not None else missing

    worst = heapq.nsmallest(k, rows, key=lambda r: (-r["error_rate"], mean(r, -math.inf), r["name"]))
    best = heapq.nsmallest(k, rows, key=lambda r: (r["error_rate"], -mean(r, -math.inf), r["name"]))
    chosen = {r["name"] for r in worst + best}
    return [r for r in rows if r["name"] in chosen]


SHARDS_TABLE = ".shards.parquet"  # beside the JSON document (or the page): audit.json -> audit.shards.parquet


def shards_table_url(config: AuditConfig) -> str | None:
    """Where the full per-shard table goes: beside `--json` (else `--report`), `.json`/`.html` replaced by
    `SHARDS_TABLE`; None when the audit writes neither."""
    where = config.json or config.report
    if where is None:
        return None
    stem, dot, ext = where.rpartition(".")
    return (stem if dot and "/" not in ext else where) + SHARDS_TABLE


def write_shards_table(url: str, rows: Iterable[dict], storage_options: dict | None) -> None:
    """The full per-shard table as Parquet: one row per shard (name, url, source, rows, ok, errors, error_rate,
    mean, std, min, max, statuses as JSON)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text, count, real = pa.string(), pa.int64(), pa.float64()
    schema = pa.schema(
        [("name", text), ("url", text), ("source", text), ("rows", count), ("ok", count), ("errors", count)]
        + [(k, real) for k in ("error_rate", "mean", "std", "min", "max")]
        + [("statuses", text)]
    )
    columns: dict[str, list] = {k: [] for k in schema.names}
    for r in rows:
        for key, values in columns.items():
            values.append(json.dumps(r[key], sort_keys=True) if key == "statuses" else r[key])
    table = pa.table(columns, schema=schema)
    _write(url, storage_options, "wb", lambda f: pq.write_table(table, f, compression="zstd"))


def _summary(total) -> dict:  # stats.Aggregate
    d = total.to_dict()
    return {k: d[k] for k in ("rows", "ok", "errors", "error_rate", "mean", "std", "min", "max")}


def _histogram(grid: Grid, counts: np.ndarray) -> dict:
    """A histogram on `grid` as the document holds it."""
    return {"lo": grid.lo, "hi": grid.hi, "bins": grid.bins, "counts": counts.tolist()}


def _coarse(counts: np.ndarray) -> np.ndarray:
    return counts.reshape(PLOT_BINS, -1).sum(axis=1)


def thumbnails(run: ScoredRun, stats: RunStats, doc: dict, storage_options: dict | None) -> dict[str, list]:
    """Look up the keys of the lowest and highest rows, read their images back, fill the document's
    `thumbnails` and return the data URIs in the same order."""
    chosen = {"lowest": stats.lowest.rows(), "highest": stats.highest.rows()}
    if not chosen["lowest"] and not chosen["highest"]:
        return {}
    by_name = {s.name: s for s in run.shards}
    wanted: dict[str, set[int]] = {}
    for e in chosen["lowest"] + chosen["highest"]:
        wanted.setdefault(e.shard, set()).add(e.index)
    keys = {name: run.keys(by_name[name], sorted(idx)) for name, idx in wanted.items()}
    rows: list[Extreme] = []
    for items in chosen.values():
        for e in items:
            e.key = keys[e.shard].get(e.index)
            rows.append(e)
    thumbs = read_thumbnails([(e.url, e.index, e.key) for e in rows], storage_options)
    images: dict[str, list] = {}
    for which, items in chosen.items():
        doc["thumbnails"][which] = []
        images[which] = []
        for e in items:
            t = thumbs[(e.url, e.index)]
            doc["thumbnails"][which].append(
                {"key": e.key, "shard": e.shard, "url": e.url, "index": e.index, "score": e.score, "error": t.error}
            )
            images[which].append(t.data_uri)
    return images


def write_text(url: str, text: str, storage_options: dict | None = None) -> None:
    """Write a text file to a local path or an fsspec URL (parent folders created)."""
    _write(url, storage_options, "wt", lambda f: f.write(text))


def _write(url: str, storage_options: dict | None, mode: str, write: Callable[[Any], object]) -> None:
    """Open `url` for writing (parent folders created), hand the file to `write`; retried on transient errors."""
    fs, path = get_fs(url, storage_options)

    def put() -> None:
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(path, mode, **({"encoding": "utf-8"} if "t" in mode else {})) as f:
            write(f)

    retry(put, f"write {url}")
