"""The audit history beside a scored output (`audits/history.parquet`): one row per audit, so that a nightly
audit shows the nights before it (median score, error rate, drift, alerts) and anyone can query the trend
with their own tools."""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq

from dpiqa import storage
from dpiqa.engine.output import AUDITS_DIR, OutputLocation

log = logging.getLogger(__name__)

NAME = "history"
QUANTILE_KEYS = ("p01", "p05", "p10", "p25", "p50", "p75", "p90", "p95", "p99")
SCHEMA = pa.schema(
    [
        pa.field("audited_at", pa.string(), nullable=False),  # UTC, ISO 8601
        pa.field("selection", pa.string(), nullable=False),  # `all`, `run <id>`, `under <folder>`
        pa.field("run_id", pa.string()),
        pa.field("baseline", pa.string()),
        pa.field("shards", pa.int64(), nullable=False),
        pa.field("rows", pa.int64(), nullable=False),
        pa.field("ok", pa.int64(), nullable=False),
        pa.field("errors", pa.int64(), nullable=False),
        pa.field("error_rate", pa.float64(), nullable=False),
        pa.field("mean", pa.float64()),
        *[pa.field(q, pa.float64()) for q in QUANTILE_KEYS],
        pa.field("psi", pa.float64()),
        pa.field("ks", pa.float64()),
        pa.field("alert", pa.bool_(), nullable=False),
        pa.field("alerts", pa.list_(pa.string()), nullable=False),
        pa.field("statuses", pa.string(), nullable=False),  # JSON: status -> rows
        pa.field("per_source", pa.string(), nullable=False),  # JSON: [{source, rows, error_rate, mean}]
    ]
)


def row(doc: dict) -> dict:
    """The history row of an audit document."""
    selection = doc.get("selection") or {"kind": "all"}
    label = {"all": "all", "run": f"run {selection.get('run_id')}", "under": f"under {selection.get('folder')}"}
    summary, drift = doc["summary"], doc.get("drift") or {}
    baseline = doc.get("baseline") or {}
    return {
        "audited_at": doc["generated"],
        "selection": label[selection["kind"]],
        "run_id": selection.get("run_id"),
        "baseline": baseline.get("scores") or baseline.get("document"),
        "shards": int(selection.get("shards") or doc["shards"]["completed"]),
        "rows": summary["rows"],
        "ok": summary["ok"],
        "errors": summary["errors"],
        "error_rate": summary["error_rate"],
        "mean": summary["mean"],
        **{q: doc["quantiles"].get(q) for q in QUANTILE_KEYS},
        "psi": drift.get("psi"),
        "ks": drift.get("ks_statistic"),
        "alert": bool(doc["alerts"]),
        "alerts": list(doc["alerts"]),
        "statuses": json.dumps({s["status"]: s["count"] for s in doc["statuses"]}),
        "per_source": json.dumps(
            [{k: s[k] for k in ("source", "rows", "error_rate", "mean")} for s in doc["per_source"]]
        ),
    }


def read(location: OutputLocation) -> list[dict]:
    """The history rows, oldest first ([] when there is none yet, or it cannot be read: a warning says so)."""
    path = storage.fs_join(location.path, AUDITS_DIR, f"{NAME}.parquet")
    if not location.fs.exists(path):
        return []
    try:
        with location.fs.open(path, "rb") as f:
            return pq.read_table(f).to_pylist()
    except Exception as exc:  # a damaged history must not stop tonight's audit
        log.warning(
            "%s: unreadable audit history (%s); starting a new one", location.child(AUDITS_DIR, f"{NAME}.parquet"), exc
        )
        return []


def append(location: OutputLocation, doc: dict, keep: int = 30) -> list[dict]:
    """Add the audit's row (the file rewritten whole, atomically: nightly audits add one row a night) and
    return the last `keep` rows, this one included, for the page's trend plots."""
    rows = [*read(location), row(doc)]
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in SCHEMA} for r in rows], schema=SCHEMA)
    location.write_table(AUDITS_DIR, NAME, table)
    return [
        {
            k: r[k]
            for k in (
                "audited_at",
                "selection",
                "run_id",
                "rows",
                "error_rate",
                "mean",
                "p50",
                "psi",
                "ks",
                "alert",
                "alerts",
            )
        }
        for r in rows[-keep:]
    ]
