"""Benchmark: what `dpiqa compact` buys a query over a score output of many small per-shard files.

Writes a synthetic `dpiqa score` output (the real schema and metadata, completion markers) of `--shards` shards
of `--rows-per-shard` rows, then measures, in this process and on this machine:

1. a DuckDB query (`count(*)`, `avg(score)` by status) over `OUT/scores/*.parquet`, and `dpiqa audit`'s
   `run_audit` (local scan, no thumbnails) on the per-shard files: the baseline;
2. `dpiqa compact` (engine.compact.compact) itself;
3. the same query over `OUT/compacted/*.parquet` and the same audit on the compacted output;

and prints each time with its ratio to the baseline, and the files and bytes before and after.

    python bench/compact.py [--shards 10000] [--rows-per-shard 100] [--workdir DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import publish  # noqa: E402

from dpiqa.engine import schema  # noqa: E402
from dpiqa.engine.output import OutputLocation  # noqa: E402
from dpiqa.version import machine  # noqa: E402


def generate(out: Path, shards: int, rows: int) -> None:
    """A score output: OUT/_run.json, OUT/scores/NAME.parquet and OUT/_done/NAME.json per shard."""
    identity = {"model": "synthetic", "checkpoint_hash": "bench:synthetic"}
    digest = OutputLocation(str(out)).claim(identity)
    scores_schema = schema.with_metadata(schema.SCORES_SCHEMA, {**identity, "code_version": "bench"})
    (out / "scores").mkdir()
    (out / "_done").mkdir()
    rng = np.random.default_rng(0)
    for i in range(shards):
        name, url = f"{i:06d}", f"s3://corpus/shards/{i:06d}.tar"
        score = rng.normal(3.0, 1.0, rows).astype(np.float32)
        failed = rng.random(rows) < 0.02
        status = np.where(failed, schema.DECODE_ERROR, schema.OK)
        table = pa.Table.from_arrays(
            [
                pa.array([f"{name}_{k:05d}" for k in range(rows)]),
                pa.array([url] * rows),
                pa.array(np.arange(rows), pa.int64()),
                pa.array(score, pa.float32(), mask=failed),
                pa.array(["synthetic"] * rows),
                pa.array(np.full(rows, 512, np.int32)),
                pa.array(np.full(rows, 384, np.int32)),
                pa.array(status.tolist()),
                pa.array([("cannot decode" if f else None) for f in failed], pa.string()),
            ],
            schema=scores_schema,
        )
        pq.write_table(table, out / "scores" / f"{name}.parquet", compression="zstd")
        statuses = {str(k): int(v) for k, v in zip(*np.unique(status, return_counts=True), strict=True)}
        marker = {"shard": url, "rows": rows, "statuses": statuses, "config_hash": digest, "finished": "bench"}
        (out / "_done" / f"{name}.json").write_text(json.dumps(marker))


def timed(fn):  # a callable and its result
    t0 = time.monotonic()
    result = fn()
    return time.monotonic() - t0, result


def query(glob: str) -> list[tuple]:
    import duckdb

    sql = f"SELECT status, count(*), avg(score) FROM read_parquet('{glob}') GROUP BY status ORDER BY status"
    return duckdb.connect().execute(sql).fetchall()


def files_and_bytes(folder: Path) -> tuple[int, int]:
    files = list(folder.glob("*.parquet"))
    return len(files), sum(f.stat().st_size for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--rows-per-shard", type=int, default=100)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=None, help="also write the result (Markdown) here")
    args = parser.parse_args()

    from dpiqa.engine.audit import AuditConfig, run_audit
    from dpiqa.engine.compact import CompactConfig, compact

    work = Path(args.workdir or tempfile.mkdtemp(prefix="dpiqa-bench-compact-"))
    out = work / "out"
    t_gen, _ = timed(lambda: generate(out, args.shards, args.rows_per_shard))
    before_files, before_bytes = files_and_bytes(out / "scores")
    t_q1, rows1 = timed(lambda: query(f"{out}/scores/*.parquet"))
    t_a1, doc1 = timed(lambda: run_audit(AuditConfig(scores=str(out), thumbnails=0)).doc)
    t_c, result = timed(lambda: compact(CompactConfig(str(out))))
    after_files, after_bytes = files_and_bytes(out / "compacted")
    t_q2, rows2 = timed(lambda: query(f"{out}/compacted/*.parquet"))
    t_a2, doc2 = timed(lambda: run_audit(AuditConfig(scores=str(out), thumbnails=0)).doc)
    assert [r[:2] for r in rows1] == [r[:2] for r in rows2], (rows1, rows2)
    assert doc1["summary"]["rows"] == doc2["summary"]["rows"] == args.shards * args.rows_per_shard

    total = args.shards * args.rows_per_shard
    text = f"""# `dpiqa compact`: a query and an audit before and after (bench/compact.py)

Machine: {machine()}
Output: {args.shards:,} shards x {args.rows_per_shard} rows = {total:,} rows (synthetic, the real schema), local
disk; generated in {t_gen:.1f} s.

| | per-shard files | compacted | ratio (before / after) |
| --- | ---: | ---: | ---: |
| Parquet files | {before_files:,} | {after_files:,} | {before_files / max(after_files, 1):,.0f}x |
| bytes | {before_bytes / 1e6:,.1f} MB | {after_bytes / 1e6:,.1f} MB | {before_bytes / max(after_bytes, 1):.2f}x |
| DuckDB `count(*), avg(score)` by status | {t_q1:.2f} s | {t_q2:.2f} s | {t_q1 / t_q2:.1f}x |
| `run_audit` (local scan, no thumbnails) | {t_a1:.2f} s | {t_a2:.2f} s | {t_a1 / t_a2:.1f}x |

`dpiqa compact` itself: {t_c:.1f} s for {result.shards:,} shards ({result.shards / t_c:,.0f} shards/s), {len(result.parts)}
part(s) of {result.bytes / 1e6:,.1f} MB in all.
"""
    publish(text, args.out)


if __name__ == "__main__":
    main()
