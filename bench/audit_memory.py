"""Benchmark: peak memory of `dpiqa audit` on 1x and 10x rows (it should stay flat).

Generates two synthetic `dpiqa score` outputs (Parquet in the real schema and metadata, completion
markers) of `--rows` and 10 x `--rows` rows in shards of `--rows-per-shard`, then runs
`dpiqa audit --scores RUN --baseline RUN --report ... --json ...` on each in a child process and reads
that child's peak resident set size from `os.wait4`. Each run is measured twice: through the `dpiqa`
command (what a cron job pays, including every import the CLI makes) and as `dpiqa.engine.audit.run_audit`
alone (the audit's own footprint). The shards the rows point at do not exist, so the
thumbnails are error entries: the scan, the statistics, drift, plots and page are all exercised; only
the thumbnail decoding (at most 2 x 8 images, whatever the run's size) is not.

    python bench/audit_memory.py [--rows 200000] [--rows-per-shard 10000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dpiqa.engine import schema  # noqa: E402
from dpiqa.engine.output import SCORES_DIR, OutputLocation  # noqa: E402
from dpiqa.version import machine  # noqa: E402


def generate(out: Path, rows: int, per_shard: int, seed: int = 0) -> None:
    """A score run of `rows` rows: N(50, 10) scores, 2 % failures of three kinds, shards in 4 folders."""
    rng = np.random.default_rng(seed)
    location = OutputLocation(str(out))
    meta = schema.with_metadata(schema.SCORES_SCHEMA, {"model": "synthetic", "checkpoint_hash": "bench"})
    location.claim({"model": "synthetic"})
    for s in range(rows // per_shard):
        name = f"{s:05d}"
        # Local paths that do not exist: each thumbnail fails at once (an s3:// URL here would wait on a bucket
        # that cannot be reached: minutes of connection retries where the network is closed, as in CI).
        url = f"{out.parent / 'missing-corpus'}/part{s % 4}/{name}.tar"
        n = per_shard
        status = np.where(rng.random(n) < 0.98, "ok", rng.choice(["decode_error", "no_image", "too_large"], n))
        score = rng.normal(50, 10, n).astype(np.float32)
        ok = status == "ok"
        table = pa.Table.from_arrays(
            [
                pa.array([f"{name}_{i:06d}" for i in range(n)]),
                pa.array([url] * n),
                pa.array(np.arange(n)),
                pa.array(score, mask=~ok),
                pa.array(["synthetic"] * n),
                pa.array(np.full(n, 512, np.int32)),
                pa.array(np.full(n, 384, np.int32)),
                pa.array(status),
                pa.array(np.where(ok, None, "synthetic failure").tolist(), pa.string()),
            ],
            schema=meta,
        )
        location.write_table(SCORES_DIR, name, table)
        location.write_marker(name, {"shard": url, "rows": n, "statuses": {}, "config_hash": "bench"})


ENGINE_ONLY = """
import sys
from dpiqa.engine.audit import AuditConfig, run_audit
run, report, doc = sys.argv[1:]
d = run_audit(AuditConfig(scores=run, baseline=run, report=report, json=doc)).doc
print(f"audited {d['summary']['rows']:,} rows of {d['shards']['completed']} shards (engine only)")
"""


def audit_peak(run: Path, workdir: Path, cli: bool) -> tuple[float, float]:
    """Run the audit in a child process; returns (peak RSS in MiB, seconds)."""
    report, doc = str(workdir / f"{run.name}.html"), str(workdir / f"{run.name}.json")
    if cli:
        cmd = [
            sys.executable,
            "-m",
            "dpiqa.jobs.cli",
            "audit",
            "--scores",
            str(run),
            "--baseline",
            str(run),
            "--report",
            report,
            "--json",
            doc,
        ]
    else:
        cmd = [sys.executable, "-c", ENGINE_ONLY, str(run), report, doc]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the maximum over all children
    seconds = time.monotonic() - t0
    out = proc.stdout.read()
    proc.stdout.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"audit failed: {out}")
    print(f"  {out.strip().splitlines()[0]}")
    return usage.ru_maxrss / 1024, seconds  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the 1x run (default: 200000)")
    parser.add_argument("--rows-per-shard", type=int, default=10_000, help="rows per shard (default: 10000)")
    parser.add_argument("--workdir", default=None, help="where to generate the runs (default: a temp folder)")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="audit-bench-"))
    print(f"machine: {machine()}")
    results = {}
    for scale in (1, 10):
        run = workdir / f"run{scale}x"
        rows = args.rows * scale
        t0 = time.monotonic()
        generate(run, rows, args.rows_per_shard)
        print(
            f"{scale:>2}x: {rows:,} rows in {rows // args.rows_per_shard} shards (generated in "
            f"{time.monotonic() - t0:.1f} s)"
        )
        for cli in (True, False):
            rss, seconds = results[scale, cli] = audit_peak(run, workdir, cli)
            print(f"     peak RSS {rss:.1f} MiB, {seconds:.1f} s ({'dpiqa audit' if cli else 'run_audit only'})")
    for cli in (True, False):
        big, small = results[10, cli][0], results[1, cli][0]
        print(
            f"peak RSS 10x / 1x = {big / small:.3f} ({big:.1f} / {small:.1f} MiB) for 10x the rows "
            f"({'dpiqa audit' if cli else 'run_audit only'})"
        )


if __name__ == "__main__":
    main()
