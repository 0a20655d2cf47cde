"""The audit of a scored run: statistics, drift against a baseline, thumbnails, the JSON document, the
HTML page, and the alerts that decide the exit status.

Its parts: `config` (`AuditConfig`, `AuditResult`), `selection` (the shards and the baseline), `scan` (the
statistics, in this process or on Ray), `document` (the JSON document and what is written beside it).
"""

from __future__ import annotations

import json
import logging

from dpiqa.engine.audit import history, report
from dpiqa.engine.audit.config import ALERT_EXIT, AuditConfig, AuditResult
from dpiqa.engine.audit.document import (
    baseline_from_document,
    document,
    per_shard_rows,
    shards_table_url,
    thumbnails,
    write_shards_table,
    write_text,
)
from dpiqa.engine.audit.scan import RAY_ROWS, scan
from dpiqa.engine.audit.selection import read_baseline_document, select
from dpiqa.engine.audit.stats import Grid
from dpiqa.engine.executor import named_cluster
from dpiqa.engine.scores import ScoredRun

__all__ = ["ALERT_EXIT", "AuditConfig", "AuditResult", "alerts", "run_audit"]

log = logging.getLogger(__name__)


def run_audit(config: AuditConfig) -> AuditResult:
    """Audit `config.scores` (and compare it with `config.baseline`), write the page and the JSON.

    Raises:
        ValueError: a location holds no completed shard.
    """
    whole = ScoredRun(config.scores, config.storage_options)
    run, selection, base, base_label = select(config, whole)
    base_doc = read_baseline_document(config.baseline_json, config.storage_options) if config.baseline_json else None
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
