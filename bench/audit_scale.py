"""Benchmark: `dpiqa audit` in one process against the same audit split among Ray tasks (statistics per
group of Parquet files, merged), on the same scored output, in the same run.

The scored output is synthetic but real in form: `--shards` Parquet files in `dpiqa score`'s schema and
layout (markers last), `--rows` rows each, scores drawn from a seeded normal, 2 % error rows. Both audits
read every row; their documents are checked equal before the rates are printed.

    python bench/audit_scale.py [--shards 200] [--rows 50000] [--cpus 2] [--out bench/results/audit-scale-cpu.md]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import publish  # noqa: E402
from dpiqa.version import machine  # noqa: E402


def synthetic_run(out: Path, shards: int, rows: int, seed: int = 0) -> int:
    from dpiqa.engine import schema
    from dpiqa.engine.output import OutputLocation, config_hash

    loc = OutputLocation(str(out))
    identity = {"model": "synthetic", "checkpoint_hash": "bench"}
    digest = loc.claim(identity)
    table_schema = schema.with_metadata(schema.SCORES_SCHEMA, {**identity, "config_hash": config_hash(identity)})
    rng = np.random.default_rng(seed)
    for s in range(shards):
        url = f"s3://catalog/part-{s // 50:03d}/{s:05d}.tar"
        scores = rng.normal(55.0, 12.0, rows).astype(np.float32)
        bad = rng.random(rows) < 0.02
        status = np.where(bad, "decode_error", "ok")
        table = pa.Table.from_arrays(
            [
                pa.array([f"k{s}_{i}" for i in range(rows)], pa.string()),
                pa.array([url] * rows, pa.string()),
                pa.array(np.arange(rows), pa.int64()),
                pa.array(scores, pa.float32(), mask=bad),
                pa.array(["synthetic"] * rows, pa.string()),
                pa.array(np.full(rows, 640, np.int32)),
                pa.array(np.full(rows, 480, np.int32)),
                pa.array(status, pa.string()),
                pa.array(np.where(bad, "jpg: broken", None), pa.string()),
            ],
            schema=table_schema,
        )
        name = f"{s:05d}"
        loc.write_table("scores", name, table)
        loc.write_marker(
            name,
            {
                "shard": url,
                "rows": rows,
                "config_hash": digest,
                "statuses": {"ok": int((~bad).sum()), "decode_error": int(bad.sum())},
            },
        )
    return shards * rows


def close(a, b) -> bool:  # JSON values
    """Equal documents, floats up to summation order (the merged sums add in another grouping)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    return a == b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=200)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import ray

    from dpiqa.engine.audit import AuditConfig, run_audit

    work = Path(tempfile.mkdtemp(prefix="dpiqa-audit-scale-"))
    try:
        total = synthetic_run(work / "scores", args.shards, args.rows)
        # a Ray of its own ("local"), never one another process on this machine runs
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        results, docs = {}, {}
        for executor in ("local", "ray", "local", "ray"):  # twice each: the second pass reads warm files
            t0 = time.monotonic()
            doc = run_audit(AuditConfig(scores=str(work / "scores"), thumbnails=0, executor=executor)).doc
            results[executor] = time.monotonic() - t0
            doc.pop("generated")
            docs[executor] = doc
        same = close(docs["local"], docs["ray"])
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rate = {k: total / v for k, v in results.items()}
    text = "\n".join(
        [
            f"`python bench/audit_scale.py --shards {args.shards} --rows {args.rows} --cpus {args.cpus}`: "
            f"{total:,} rows in {args.shards} Parquet files, each audit read every row (second of two passes).",
            "",
            "| audit | seconds | rows/s |",
            "| --- | ---: | ---: |",
            f"| one process | {results['local']:.1f} | {rate['local']:,.0f} |",
            f"| Ray tasks ({args.cpus} CPUs), merged | {results['ray']:.1f} | {rate['ray']:,.0f} |",
            "",
            f"Ray / one process: {rate['ray'] / rate['local']:.2f}x; the two JSON documents are equal: {same}.",
            "",
            f"Machine: {machine()}",
        ]
    )
    publish(text, args.out)


if __name__ == "__main__":
    main()
