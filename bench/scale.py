"""Benchmark: the engine's ceiling and what reaches the driver, today's design against the one before it.

`dpiqa score --model null` (constant scores and zero maps at no cost: the engine alone is measured) over
small pre-made shards, with and without 64 KiB quality maps, on a `ray.cluster_utils.Cluster` of several
nodes on this machine (or a real cluster with `--address`), for two versions of the code measured in the
same run:

  - `baseline`: the commit before the shard writers moved to the workers (`--baseline-ref`), where every
    row and map came to the driver, which wrote every file; it runs from a git worktree of that commit,
    given the same null scorer (its registry is patched to know `null`, and nothing else is changed);
  - `current`: this checkout.

Each measurement runs in a fresh driver process (`--child`): wall time and images/s of the whole run, the
driver's CPU seconds (user + system, Ray Data's executor threads included) and the bytes of the batches
the driver received, both per 100,000 images, and the driver's peak RSS. The table prints the ratios
current / baseline and the machine.

    python bench/scale.py [--nodes 1,2] [--cpus-per-node 2] [--shards 16] [--per-shard 256]
                          [--baseline-ref 8b2e131] [--address ray://...] [--out bench/results/scale-cpu.md]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASELINE_REF = "8b2e131"  # main before "Workers write, the driver commits" (the driver wrote every shard)


def build_shards(folder: Path, shards: int, per_shard: int) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    import corpus  # noqa: PLC0415 - the test-suite's shard builder

    for s in range(shards):
        corpus.write_shard(folder / f"{s:05d}.tar", corpus.good_samples(f"s{s}_", per_shard, seed=s))


def baseline_checkout(ref: str, into: Path) -> Path:
    """A worktree of `ref` with the null scorer added to its registry (the only change)."""
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(into), ref], check=True, capture_output=True
    )
    # the null scorer, in the baseline's import names (engine/models at the top before the dpiqa namespace)
    null = (REPO / "models" / "null.py").read_text()
    (into / "models" / "null.py").write_text(
        null if (into / "dpiqa").is_dir() else null.replace("dpiqa.models.", "models.")
    )
    init = into / "models" / "registry.py"
    text = init.read_text()
    patches = [
        (
            'BASELINES: dict[str, str] = {"brisque": "brisque-0.2.0:live-svr"}',
            'BASELINES: dict[str, str] = {"brisque": "brisque-0.2.0:live-svr", "null": "null:constant"}',
        ),
        (
            "    if name_or_path in BASELINES:\n        from models.brisque import BrisqueScorer\n",
            '    if name_or_path == "null":\n        from models.null import NullScorer\n\n        return NullScorer()\n'
            "    if name_or_path in BASELINES:\n        from models.brisque import BrisqueScorer\n",
        ),
        (
            "    if name_or_path in BASELINES:\n        from models.preprocessing import Preprocessing\n",
            '    if name_or_path == "null":\n        from models.preprocessing import Preprocessing\n\n'
            '        return ModelInfo("null", "null", "null:constant", Preprocessing(size=(32, 32)), 100.0, (8, 64, 64),'
            ' {}, "baseline")\n'
            "    if name_or_path in BASELINES:\n        from models.preprocessing import Preprocessing\n",
        ),
    ]
    for old, new in patches:
        if old not in text:
            raise SystemExit(
                f"bench/scale.py: {ref}'s models/registry.py is not the one expected; cannot add the null scorer to it"
            )
        text = text.replace(old, new, 1)
    init.write_text(text)
    return into


def child(args: argparse.Namespace) -> None:
    """One measured run in this (fresh) process; prints a JSON line."""
    import importlib

    # the code under PYTHONPATH in its own names: the baseline commit predates the dpiqa namespace
    prefix = "dpiqa." if (Path.cwd() / "dpiqa").is_dir() else ""
    RayDataExecutor = importlib.import_module(f"{prefix}engine.executor.ray_data").RayDataExecutor
    pipeline = importlib.import_module(f"{prefix}engine.pipeline")
    ScoreConfig, run_score = pipeline.ScoreConfig, pipeline.run_score

    received = [0]
    first: list = []  # the driver's CPU time and the clock at the first batch it received
    original = RayDataExecutor.run

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def counting(self, items, stages, sink):  # noqa: ANN001, ANN202 - the same signature in both versions
        def measured(batch):  # noqa: ANN001, ANN202
            if not first:
                first.extend([cpu(), time.monotonic()])
            received[0] += sum(_nbytes(v) for v in batch.values())
            return sink(batch)

        return original(self, items, stages, measured)

    RayDataExecutor.run = counting
    import ray

    ray.init(address=args.address, log_to_driver=False)
    cpu0, t0 = cpu(), time.monotonic()
    result = run_score(
        ScoreConfig(
            input=args.input,
            output=args.output,
            model="null",
            write_maps=args.maps,
            batch_size=args.batch_size,
            chunk_size=args.chunk_size,
        ),
        RayDataExecutor(address=args.address),
    )
    seconds, cpu1, end = time.monotonic() - t0, cpu(), time.monotonic()
    rows = result.manifest["rows"]
    print(
        json.dumps(
            {
                "rows": rows,
                "seconds": seconds,
                "images_per_second": rows / seconds,
                "steady_seconds": end - first[1],
                "steady_images_per_second": rows / max(end - first[1], 1e-9),
                "driver_cpu_seconds": cpu1 - cpu0,
                "driver_steady_cpu_seconds": cpu1 - first[0],
                "driver_bytes": received[0],
                "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "failed": len(result.failed),
            }
        )
    )


def _nbytes(column) -> int:  # noqa: ANN001 - a numpy column
    if column.dtype == object:
        return sum(len(v) if isinstance(v, (bytes, str)) else 8 for v in column)
    return int(column.nbytes)


def measure(
    code: Path, address: str, shards: Path, out: Path, maps: bool, batch_size: int = 64, chunk_size: int = 128
) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        str(REPO / "bench" / "scale.py"),
        "--child",
        "--address",
        address,
        "--input",
        str(shards),
        "--output",
        str(out),
        "--batch-size",
        str(batch_size),
        "--chunk-size",
        str(chunk_size),
    ] + (["--maps"] if maps else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=code)
    if proc.returncode != 0:
        raise SystemExit(f"measurement failed ({code.name}, maps={maps}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="1,2", help="worker-node counts of the local cluster to measure")
    ap.add_argument(
        "--cpus-per-node",
        type=int,
        default=2,
        help="CPUs of each node (at least 2: the scoring actor holds one, decoding needs another)",
    )
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--per-shard", type=int, default=256)
    ap.add_argument("--baseline-ref", default=BASELINE_REF)
    ap.add_argument("--address", default=None, help="a running cluster instead of a local one")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here too")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    ap.add_argument("--maps", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, default=64, help="score's --batch-size (rows per model call)")
    ap.add_argument("--chunk-size", type=int, default=128, help="samples per block from the shard reader")
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    sys.path.insert(0, str(REPO))
    from dpiqa.version import machine

    work = Path(tempfile.mkdtemp(prefix="dpiqa-scale-"))
    shards = work / "shards"
    shards.mkdir()
    build_shards(shards, args.shards, args.per_shard)
    codes = {"baseline": baseline_checkout(args.baseline_ref, work / "baseline"), "current": REPO}
    rows = []
    try:
        for nodes in [None] if args.address else [int(n) for n in args.nodes.split(",")]:
            cluster = None
            address = args.address
            if address is None:
                from ray.cluster_utils import Cluster

                cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
                for _ in range(nodes):
                    cluster.add_node(num_cpus=args.cpus_per_node)
                cluster.wait_for_nodes()
                address = cluster.address
            try:
                for maps in (False, True):
                    for version, code in codes.items():
                        out = work / f"out-{version}-{nodes}-{maps}"
                        r = measure(code, address, shards, out, maps)
                        shutil.rmtree(out, ignore_errors=True)
                        r.update(version=version, nodes=nodes, maps=maps)
                        rows.append(r)
                        print(json.dumps(r), flush=True)
            finally:
                if cluster is not None:
                    cluster.shutdown()
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(work / "baseline")], capture_output=True
        )
        shutil.rmtree(work, ignore_errors=True)

    table = render(rows, args)
    print(table)
    print(f"\nmachine: {machine()}")
    if args.out:
        args.out.write_text(table + f"\n\nMachine: {machine()}\n")


def render(rows: list[dict], args: argparse.Namespace) -> str:
    per = 100_000
    lines = [
        f"`python bench/scale.py --nodes {args.nodes} --cpus-per-node {args.cpus_per_node} --shards {args.shards} "
        f"--per-shard {args.per_shard}`: `dpiqa score --model null` over {args.shards} x {args.per_shard} images, "
        f"baseline = `{args.baseline_ref}` (the driver wrote every file), current = this checkout.",
        "",
        "Steady state = from the first batch the driver received to the end (start-up, imports and Ray's start, "
        "is the same for both designs and not per image). Driver cores = its CPU seconds per second then.",
        "",
        "| nodes | maps | version | images/s (whole run) | images/s (steady) | driver cores (steady) | "
        "driver CPU s / 100k images | driver bytes / image | driver peak RSS MiB |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['nodes'] or 'cluster'} | {'64 KiB' if r['maps'] else 'no'} | {r['version']} | "
            f"{r['images_per_second']:.0f} | {r['steady_images_per_second']:.0f} | "
            f"{r['driver_steady_cpu_seconds'] / r['steady_seconds']:.2f} | "
            f"{r['driver_steady_cpu_seconds'] / r['rows'] * per:.1f} | "
            f"{r['driver_bytes'] / r['rows']:.1f} | {r['driver_peak_rss_mib']:.0f} |"
        )
    lines += [
        "",
        "| nodes | maps | images/s current / baseline | driver CPU per image baseline / current | "
        "driver bytes per image baseline / current |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r["version"] != "current":
            continue
        b = next(x for x in rows if x["version"] == "baseline" and x["nodes"] == r["nodes"] and x["maps"] == r["maps"])
        lines.append(
            f"| {r['nodes'] or 'cluster'} | {'64 KiB' if r['maps'] else 'no'} | "
            f"{r['images_per_second'] / b['images_per_second']:.2f} | "
            f"{b['driver_steady_cpu_seconds'] / max(r['driver_steady_cpu_seconds'], 1e-9):.1f}x | "
            f"{(b['driver_bytes'] / b['rows']) / max(r['driver_bytes'] / r['rows'], 1e-9):.0f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
