"""The audit of a scored run: statistics, drift against a baseline, thumbnails, the JSON document, the
HTML page, and the alerts that decide the exit status."""

from __future__ import annotations

import heapq
import json
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from dpiqa.engine.audit import drift, history, report
from dpiqa.engine.audit.stats import Extreme, Grid, RunStats
from dpiqa.engine.audit.thumbnails import read_thumbnails
from dpiqa.engine.executor import named_cluster
from dpiqa.engine.executor.base import UnitWorker
from dpiqa.engine.progress import Progress
from dpiqa.engine.scores import ScoredRun, source_of
from dpiqa.errors import ALERT
from dpiqa.storage import get_fs, retry
from dpiqa.version import code_version

log = logging.getLogger(__name__)

ALERT_EXIT = ALERT  # the exit status when a threshold is crossed (dpiqa/errors.py)
PLOT_BINS = 64  # the histogram plot's bins (the fine grid summed in groups)
DOC_VERSION = 1


@dataclass
class AuditConfig:
    """What an audit reads, writes and alerts on.

    Args:
        scores: output location of the `dpiqa score` run to audit.
        report: where to write the HTML page (local path or fsspec URL), or None.
        json: where to write the JSON document, or None.
        baseline: output location of a previous run to compare against, or None.
        run: audit only the shards one run of `score` wrote: `latest` or its id (`runs/<id>.json`); the
            alert thresholds then apply to that increment.
        under: audit only the shards below this folder of the input (`2026-11-27`: a night's folder).
        baseline_runs: compare with the shards the N runs before the audited one wrote (a trailing baseline
            from the same output).
        baseline_json: compare with an earlier audit's JSON document (its histogram and summary).
        history: append this audit's summary to `audits/history.parquet` beside the scores (the command line
            does by default).
        trend: nights of history the page plots (this one included).
        max_error_rate: alert when the share of rows whose status is not `ok` exceeds this.
        max_drift: alert when the PSI against the baseline exceeds this (only with a baseline).
        thumbnails: how many lowest and how many highest scored images to show (0: none).
        bins: bins of the fine histogram grid (a multiple of 64).
        batch_size: rows per streamed record batch.
        executor: `local` (one process streams every file), `ray` (the files are split among Ray tasks
            whose statistics merge), or `auto`: Ray when a cluster is named (`address` or RAY_ADDRESS) or the
            run has more than `RAY_ROWS` rows, else local.
        address: Ray cluster address.
        storage_options: fsspec options for every location (scores, baseline, shards, outputs).
    """

    scores: str
    report: str | None = None
    json: str | None = None
    baseline: str | None = None
    run: str | None = None
    under: str | None = None
    baseline_runs: int | None = None
    baseline_json: str | None = None
    history: bool = False
    trend: int = 30
    max_error_rate: float | None = None
    max_drift: float | None = 0.25
    thumbnails: int = 8
    bins: int = 2048
    batch_size: int = 65536
    executor: str = "auto"
    address: str | None = None
    storage_options: dict | None = None

    def __post_init__(self) -> None:
        if self.bins <= 0 or self.bins % PLOT_BINS:
            raise ValueError(f"bins must be a positive multiple of {PLOT_BINS}, not {self.bins}")
        if sum(x is not None for x in (self.baseline, self.baseline_runs, self.baseline_json)) > 1:
            raise ValueError("give one baseline: --baseline, --baseline-runs or --baseline-json")
        if self.run is not None and self.under is not None:
            raise ValueError("select the shards by --run or by --under, not both")
        if self.baseline_runs is not None and self.baseline_runs < 1:
            raise ValueError(f"--baseline-runs must be at least 1, not {self.baseline_runs}")
        if self.executor not in ("auto", "local", "ray"):
            raise ValueError(f"executor must be auto, local or ray, not {self.executor!r}")
        if self.thumbnails < 0:
            raise ValueError(f"thumbnails must be >= 0, not {self.thumbnails}")
        for name in ("max_error_rate", "max_drift"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, not {value}")


@dataclass
class AuditResult:
    """The audit's JSON document and its alerts."""

    doc: dict = field(default_factory=dict)

    @property
    def alerts(self) -> list[str]:
        return self.doc.get("alerts", [])

    @property
    def exit_code(self) -> int:
        return ALERT_EXIT if self.alerts else 0


RAY_ROWS = 50_000_000  # `auto` scans on Ray above this many rows (about 100 s in one process)
ROWS_PER_TASK = 4_000_000  # rows one Ray task of a distributed scan reads


def scan(
    run: ScoredRun,
    grid: Grid,
    extremes: int,
    groups: bool,
    batch_size: int,
    label: str,
    executor: str = "local",
    address: str | None = None,
) -> RunStats:
    """Every completed shard of `run` read once into a `RunStats`: streamed in this process, or split
    among Ray tasks (`executor="ray"`) whose statistics merge into the same result."""
    if executor == "ray":
        return _scan_on_ray(run, grid, extremes, groups, batch_size, label, address)
    return _scan(run, grid, extremes, groups, batch_size, label)


def _scan(run: ScoredRun, grid: Grid, extremes: int, groups: bool, batch_size: int, label: str | None) -> RunStats:
    stats = RunStats(grid, extremes=extremes, groups=groups)
    columns = ["score", "status", "index"] + (["source"] if run.has_source and groups else [])
    progress = Progress(label, len(run.shards), unit="rows") if label else None
    seen: set[str] = set()
    for shard, batch in run.batches(columns, batch_size):
        seen.add(shard.name)
        stats.add(shard.name, shard.url, batch, source=None if run.has_source else source_of(shard.url))
        if progress is not None:
            progress.update(len(seen) - 1, stats.total.rows)
    if progress is not None:
        progress.update(len(seen), stats.total.rows, force=True)
    return stats


class ScanWorker(UnitWorker):
    """The audit's unit worker on a cluster: one part of the run (shards of about `ROWS_PER_TASK` rows) per call,
    its files read where the worker runs; returns the part's statistics (bounded by the grid, the extremes and
    one aggregate per shard), which the driver merges."""

    label = "audit"

    def __init__(
        self,
        url: str,
        storage_options: dict | None,
        schema,
        grid: Grid,
        extremes: int,
        groups: bool,
        batch_size: int,
    ) -> None:
        self.url, self.storage_options, self.schema = url, storage_options, schema
        self.grid, self.extremes, self.groups, self.batch_size = grid, extremes, groups, batch_size

    def __call__(self, unit: dict) -> dict:
        part = ScoredRun.part(self.url, self.storage_options, unit["shards"], self.schema)
        return {"stats": _scan(part, self.grid, self.extremes, self.groups, self.batch_size, None)}


def _scan_on_ray(
    run: ScoredRun, grid: Grid, extremes: int, groups: bool, batch_size: int, label: str, address: str | None
) -> RunStats:
    """The files split into units by their markers' row counts (about `ROWS_PER_TASK` each), scanned by Ray
    workers through the shard loop every job shares (`engine.runner.run_units`: a lost worker costs only its
    unit); the parts' statistics are merged here."""
    import ray

    from dpiqa.engine.executor.ray_actors import RayExecutor
    from dpiqa.engine.runner import Tally, run_units

    parts, current, rows = [], [], 0
    for shard in run.shards:
        current.append(shard)
        rows += shard.rows
        if rows >= ROWS_PER_TASK:
            parts.append(current)
            current, rows = [], 0
    if current:
        parts.append(current)
    executor = RayExecutor(address)
    executor.connect()
    slots = max(1, min(len(parts), int(ray.cluster_resources().get("CPU", 1))))
    worker = ScanWorker(run.url, run.storage_options, run.schema, grid, extremes, groups, batch_size)
    stats = RunStats(grid, extremes=extremes, groups=groups)
    progress, done = Progress(label, len(run.shards), unit="rows"), [0]
    failures: dict[str, str] = {}

    def merge(unit: dict, result: dict) -> None:
        stats.merge(result["stats"])
        done[0] += len(unit["shards"])
        progress.update(done[0], stats.total.rows)

    def failed(unit: dict, why: str) -> None:
        failures[unit["url"]] = why

    pool = executor.pool(worker, slots, depth=1)
    try:
        units = ({"url": f"part {i + 1} of {len(parts)}", "shards": part} for i, part in enumerate(parts))
        run_units(pool, units, merge, failed, Tally(), label)
    finally:
        pool.close()
    if failures:
        unit, why = next(iter(failures.items()))
        raise OSError(f"{label}: {len(failures)} part(s) of {run.url} could not be scanned ({unit}: {why})")
    progress.update(done[0], stats.total.rows, force=True)
    return stats


def run_audit(config: AuditConfig) -> AuditResult:
    """Audit `config.scores` (and compare it with `config.baseline`), write the page and the JSON.

    Raises:
        ValueError: a location holds no completed shard.
    """
    whole = ScoredRun(config.scores, config.storage_options)
    run, selection, base, base_label = select(config, whole)
    base_doc = _read_json_url(config.baseline_json, config.storage_options) if config.baseline_json else None
    lo, hi = run.score_range()
    if base is not None:
        blo, bhi = base.score_range()
        lo = min(v for v in (lo, blo) if v is not None) if lo is not None or blo is not None else None
        hi = max(v for v in (hi, bhi) if v is not None) if hi is not None or bhi is not None else None
    if base_doc is not None and base_doc.get("histogram", {}).get("counts") is not None:
        h = base_doc["histogram"]
        lo = h["lo"] if lo is None else min(lo, h["lo"])
        hi = h["hi"] if hi is None else max(hi, h["hi"])
    grid = Grid.around(lo, hi, config.bins)
    log.info(
        "audit: %d completed shards (%s rows by their markers) at %s", len(run.shards), f"{run.rows():,}", config.scores
    )
    executor = config.executor
    if executor == "auto":
        big = run.rows() + (base.rows() if base is not None else 0) > RAY_ROWS
        named = named_cluster(config.address)
        executor = "ray" if named or big else "local"
        log.info(
            "audit: scanning on %s (%s rows%s)", executor, f"{run.rows():,}", "; a cluster is named" if named else ""
        )
    stats = scan(run, grid, config.thumbnails, True, config.batch_size, "audit", executor, config.address)
    base_stats = (
        scan(base, grid, 0, True, config.batch_size, "audit baseline", executor, config.address)
        if base is not None
        else None
    )

    doc = document(config, run, stats, base, base_stats, base_label)
    doc["selection"] = selection
    if base_doc is not None:
        baseline_from_document(doc, stats, base_doc, config.baseline_json)
    images = thumbnails(run, stats, doc, config.storage_options)
    doc["alerts"] = alerts(config, doc)
    if config.history:
        try:
            doc["history"] = history.append(whole.location, doc, config.trend)
        except OSError as exc:
            # the page and the JSON the user asked for come first; the history is beside the scores, which
            # may be read-only to whoever audits them
            where = whole.location.child(history.AUDITS_DIR, f"{history.NAME}.parquet")
            doc["history_error"] = (
                f"the audit history {where} could not be updated ({exc.strerror or exc}); this audit is not in "
                "it (--no-history skips it)"
            )
            log.warning("audit: %s", doc["history_error"])
    table_url = shards_table_url(config)
    if table_url is not None:
        write_shards_table(table_url, per_shard_rows(run, stats), config.storage_options)
        doc["per_shard_table"]["file"] = table_url
    if config.json:
        write_text(config.json, json.dumps(doc, indent=1, allow_nan=False), config.storage_options)
    if config.report:
        write_text(config.report, report.render(doc, images), config.storage_options)
    return AuditResult(doc)


def select(config: AuditConfig, whole: ScoredRun) -> tuple[ScoredRun, dict, ScoredRun | None, str | None]:
    """The shards audited (all, one run's, or those under a folder), what the selection was, and the
    baseline run with its label (another output, or the runs before the audited one)."""
    selection: dict = {"kind": "all"}
    run = whole
    records = whole.location.runs() if (config.run or config.baseline_runs) else []
    current = None
    if config.run:
        wanted = records[-1:] if config.run == "latest" else [r for r in records if r.get("run_id") == config.run]
        if not wanted:
            known = ", ".join(r.get("run_id", "?") for r in records[-5:]) or "none"
            raise ValueError(
                f"{config.scores}: no run {config.run!r} in {config.scores.rstrip('/')}/runs/ (latest: {known})"
            )
        current = wanted[0]
        names = whole.location.run_shard_names(current)
        if not names:  # a quiet night: nothing new in the input is a normal night, audited as one
            log.info("audit: run %s wrote no shard (nothing new in its input)", current.get("run_id"))
        run = whole.subset(names, empty_ok=True)
        selection = {
            "kind": "run",
            "run_id": current.get("run_id"),
            "started": current.get("started"),
            "input": current.get("input"),
            "quiet": not names,
        }
    elif config.under:
        folder = config.under.strip("/")
        names = {
            s.name
            for s in whole.shards
            if f"/{folder}/" in s.url or s.name.startswith(folder.replace("/", "__") + "__")
        }
        if not names:
            raise ValueError(f"{config.scores}: no completed shard lies under {folder!r}")
        run = whole.subset(names)
        selection = {"kind": "under", "folder": folder}
    selection["shards"] = len(run.shards)
    if config.baseline:
        return run, selection, ScoredRun(config.baseline, config.storage_options), config.baseline
    if config.baseline_runs:
        before = records[: records.index(current)] if current is not None else records
        chosen = before[-config.baseline_runs :]
        names = set().union(*(whole.location.run_shard_names(r) for r in chosen)) - {s.name for s in run.shards}
        if not names:  # the first night has nothing before it: an audit without drift, not an error
            log.info("audit: no earlier run wrote shards; no baseline for --baseline-runs %d", config.baseline_runs)
            return run, selection, None, None
        label = f"the {len(chosen)} runs before ({chosen[0].get('run_id')} .. {chosen[-1].get('run_id')})"
        return run, selection, whole.subset(names), label
    return run, selection, None, None


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
        "histogram": {
            "lo": stats.grid.lo,
            "hi": stats.grid.hi,
            "bins": stats.grid.bins,
            "counts": [float(c) for c in counts],
        },
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


def _read_json_url(url: str, storage_options: dict | None) -> dict:
    fs, path = get_fs(url, storage_options)
    try:
        with fs.open(path, "rb") as f:
            doc = json.loads(f.read())
    except FileNotFoundError:
        raise ValueError(f"--baseline-json {url}: no such file") from None
    except ValueError as exc:
        raise ValueError(f"--baseline-json {url}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError(
            f"--baseline-json {url}: JSON {type(doc).__name__}, not an audit document (a JSON object made by "
            "`dpiqa audit --json`)"
        )
    return doc


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
        "histogram": {
            "lo": stats.grid.lo,
            "hi": stats.grid.hi,
            "bins": stats.grid.bins,
            "counts": stats.counts.tolist(),
        },
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
            "histogram": {
                "lo": base_stats.grid.lo,
                "hi": base_stats.grid.hi,
                "bins": base_stats.grid.bins,
                "counts": base_stats.counts.tolist(),
            },
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
    fs, path = get_fs(url, storage_options)

    def put() -> None:
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(path, "wb") as f:
            pq.write_table(table, f, compression="zstd")

    retry(put, f"write {url}")


def _summary(total) -> dict:  # stats.Aggregate
    d = total.to_dict()
    return {k: d[k] for k in ("rows", "ok", "errors", "error_rate", "mean", "std", "min", "max")}


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


def alerts(config: AuditConfig, doc: dict) -> list[str]:
    """The thresholds the run crosses, one line each."""
    out = []
    rate = doc["summary"]["error_rate"]
    if config.max_error_rate is not None and rate > config.max_error_rate:
        out.append(
            f"error rate {rate:.4%} exceeds --max-error-rate {config.max_error_rate:g} "
            f"({doc['summary']['errors']:,} of {doc['summary']['rows']:,} rows)"
        )
    if doc["drift"] is not None and config.max_drift is not None and doc["drift"]["psi"] > config.max_drift:
        base = doc["baseline"]
        mean, base_mean = doc["summary"]["mean"], (base.get("summary") or {}).get("mean")
        moved = f"; mean score {base_mean:.4g} -> {mean:.4g}" if mean is not None and base_mean is not None else ""
        out.append(
            f"score drift PSI {doc['drift']['psi']:.4f} exceeds --max-drift {config.max_drift:g} "
            f"against {base.get('scores') or base.get('document')} (KS D={doc['drift']['ks_statistic']:.4f}"
            f"{moved})"
        )
    return out


def write_text(url: str, text: str, storage_options: dict | None = None) -> None:
    """Write a text file to a local path or an fsspec URL (parent folders created)."""
    fs, path = get_fs(url, storage_options)

    def put() -> None:
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(path, "wt", encoding="utf-8") as f:
            f.write(text)

    retry(put, f"write {url}")
