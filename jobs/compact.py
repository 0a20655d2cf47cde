"""`dpiqa compact`: a finished score output's per-shard score files -> large sorted Parquet parts."""

from __future__ import annotations

import argparse

from dpiqa.jobs.args import add_storage_options, positive_float, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compact",
        help="merge a score output's per-shard files into large Parquet parts (resumable)",
        description="Merge the per-shard score files of a `dpiqa score` output (OUT/scores/NAME.parquet) into "
        "Parquet parts of about --target-mb each, rows sorted by shard URL then index: OUT/compacted/part-K.parquet, "
        "each followed by its manifest OUT/compacted/_part-K.json (file, rows, bytes, and each shard's name, URL, "
        "rows and first row). A part is complete iff its manifest exists; then the per-shard files it holds are "
        "deleted. The completion markers OUT/_done/NAME.json stay: `dpiqa score` keeps the shards done, and "
        "`audit`, `filter` and `distill` read both forms. Quality maps (OUT/maps/) are not compacted. "
        "Rerunning compacts what is new and finishes an interrupted run (nothing lost or duplicated). "
        "Run it only while nothing else writes the output (no `dpiqa score` on it). "
        "Query the parts with any Parquet engine, e.g. DuckDB: "
        "SELECT count(*) FROM 'OUT/compacted/*.parquet'.",
    )
    p.add_argument("--scores", required=True, help="output location of the score run (local, s3://, any fsspec URL)")
    p.add_argument(
        "--target-mb",
        type=positive_float,
        default=256.0,
        metavar="MB",
        help="close a part once it holds this many MB (default: 256; the last part of a run may be smaller)",
    )
    p.add_argument(
        "--row-group-rows",
        type=positive_int,
        default=131_072,
        metavar="N",
        help="rows per Parquet row group, cut at shard boundaries (default: 131072)",
    )
    p.add_argument("--threads", type=positive_int, default=16, help="per-shard files read at once (default: 16)")
    add_storage_options(p)
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    from dpiqa.engine.compact import CompactConfig, compact, summary_line

    config = CompactConfig(
        scores=args.scores,
        target_mb=args.target_mb,
        row_group_rows=args.row_group_rows,
        threads=args.threads,
        storage_options=args.storage_options,
    )
    print(summary_line(compact(config), args.scores))
    return 0
