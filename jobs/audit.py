"""`dpiqa audit`: a scored run -> HTML report with plots, JSON figures, and an exit status for alerts."""

from __future__ import annotations

import argparse
import sys

from dpiqa.jobs.args import (
    add_address,
    add_executor,
    add_storage_options,
    location,
    nonnegative_float,
    nonnegative_int,
    positive_int,
    rate,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="report on a scored run: statistics, drift, thumbnails (exit 3 on alerts)",
        description="Audit the completed shards of a `dpiqa score` output: counts, error rates by status, score "
        "quantiles and histogram, per-shard and per-source breakdowns, drift against a baseline run "
        "(PSI over the baseline's decile bins, two-sample KS), thumbnails of the lowest and highest "
        "scored images. Writes one self-contained HTML page and/or a JSON document. Exits 3 when a "
        "threshold is crossed, printing which, so that a cron job can alert.",
    )
    p.add_argument(
        "--scores", type=location, required=True, help="output location of the score run (local, s3://, any fsspec URL)"
    )
    sel = p.add_argument_group("what to audit (default: every completed shard)")
    sel.add_argument(
        "--run",
        dest="audit_run",
        default=None,
        metavar="latest|RUN_ID",
        help="only the shards one `dpiqa score` run wrote (OUT/runs/RUN_ID.json): tonight's increment",
    )
    sel.add_argument(
        "--under",
        default=None,
        metavar="FOLDER",
        help="only the shards below this folder of the input (a date folder: 2026-11-27)",
    )
    base = p.add_argument_group("baseline (one of)")
    base.add_argument(
        "--baseline", type=location, default=None, help="output location of another score run to compare against"
    )
    base.add_argument(
        "--baseline-runs",
        type=positive_int,
        default=None,
        metavar="N",
        help="the shards the N runs before the audited one wrote, in the same output",
    )
    base.add_argument(
        "--baseline-json",
        type=location,
        default=None,
        metavar="AUDIT_JSON",
        help="an earlier audit's JSON document (its histogram, summary and per-source figures)",
    )
    p.add_argument(
        "--no-history",
        dest="history",
        action="store_false",
        help="do not append this audit to OUT/audits/history.parquet (kept by default: trends)",
    )
    p.add_argument(
        "--trend",
        type=positive_int,
        default=30,
        metavar="N",
        help="audits of the history the page plots, this one included (default: 30)",
    )
    p.add_argument("--report", type=location, default=None, help="HTML page to write (local path or URL)")
    p.add_argument(
        "--json",
        type=location,
        default=None,
        help="JSON document to write (local path or URL). The page and the JSON list the 50 worst and 50 best "
        "shards; the full per-shard table goes beside the JSON (else the page) as NAME.shards.parquet "
        "(audit.json -> audit.shards.parquet: name, url, source, rows, ok, errors, error_rate, mean, std, min, "
        "max, statuses)",
    )
    p.add_argument(
        "--max-error-rate",
        type=rate,
        default=None,
        metavar="R",
        help="alert when more than this fraction of rows failed (status not 'ok'); default: no check",
    )
    p.add_argument(
        "--max-drift",
        type=nonnegative_float,
        default=0.25,
        metavar="D",
        help="alert when the PSI against --baseline exceeds D (default: 0.25, a major shift)",
    )
    p.add_argument(
        "--thumbnails",
        type=nonnegative_int,
        default=8,
        metavar="N",
        help="show the N lowest and N highest scored images, read back from the shards (default: 8)",
    )
    add_executor(
        p,
        auto="Ray when a cluster is named or the run holds over 50 M rows, else this process",
        ray="the files split among Ray tasks whose statistics merge",
        local="this process",
    )
    add_address(p)
    add_storage_options(p)
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    from dpiqa.engine.audit import AuditConfig, run_audit

    config = AuditConfig(
        scores=args.scores,
        baseline=args.baseline,
        run=args.audit_run,
        under=args.under,
        baseline_runs=args.baseline_runs,
        baseline_json=args.baseline_json,
        history=args.history,
        trend=args.trend,
        report=args.report,
        json=args.json,
        max_error_rate=args.max_error_rate,
        max_drift=args.max_drift,
        thumbnails=args.thumbnails,
        executor=args.executor,
        address=args.address,
        storage_options=args.storage_options,
    )
    result = run_audit(config)
    doc = result.doc
    s = doc["summary"]
    median = doc["quantiles"].get("p50")
    line = (
        f"audited {s['rows']:,} rows of {doc['shards']['completed']} shards: error rate {s['error_rate']:.2%}, "
        f"median score {median:.4g}"
        if median is not None
        else f"audited {s['rows']:,} rows of {doc['shards']['completed']} shards: error rate {s['error_rate']:.2%}"
    )
    if doc["drift"]:
        line += f", PSI {doc['drift']['psi']:.4f}, KS D {doc['drift']['ks_statistic']:.4f}"
    if doc["selection"].get("quiet"):
        line += f"; a quiet night: run {doc['selection']['run_id']} found nothing new and wrote no shard"
    print(line)
    if doc.get("history_error"):
        print(f"dpiqa audit: warning: {doc['history_error']}", file=sys.stderr)
    for what, where in (("report", args.report), ("json", args.json)):
        if where:
            print(f"{what} -> {where}")
    for alert in result.alerts:
        print(f"ALERT {alert}")
    return result.exit_code
