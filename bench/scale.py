"""Benchmark: how the driver's cost grows with the number of shards, and what the workers hold, against a
baseline commit measured in the same run.

`dpiqa score --model null` (constant scores at no cost: the engine alone) over tiny pre-made shards (one
image each by default), each run a fresh driver process connected to a Ray cluster started beforehand on
this machine (`ray.cluster_utils.Cluster`: a head without CPUs and `--nodes` worker nodes). Measured:

  - driver CPU: the `dpiqa score` process's own user + system CPU seconds from the kernel (`os.wait4`), at
    each shard count; the cost per additional shard is the slope between two counts, so start-up (imports,
    connecting, listing) cancels out;
  - results received by the driver per shard (the manifest's `driver` counts: one result per unit, plus a
    progress poll of each worker every few seconds);
  - peak RSS of the scoring workers (sampled) with 64 KiB quality maps on shards of `--map-shard-images`
    images whose first unit is slowed (`DPIQA_FAILPOINTS`): it must not grow with the shard;
  - images/s on one and two worker nodes.

The baseline is a git worktree of `--baseline-ref` (main before shard-atomic units) run the same way.

    python bench/scale.py [--shards 100,1000,10000] [--baseline-shards 100,1000] [--baseline-ref b31e423]
                          [--out bench/results/scale-cpu.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BASELINE_REF = "b31e423"  # main before shard-atomic units: Ray Data pipelines, every block back to the driver


def build_shards(folder: Path, shards: int, per_shard: int) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    import corpus  # the test-suite's shard builder

    folder.mkdir(parents=True, exist_ok=True)
    one = corpus.shard_bytes(corpus.good_samples("s_", per_shard, seed=0))
    for s in range(shards):
        (folder / f"{s:05d}.tar").write_bytes(one)


def run_driver(code: Path, address: str, shards: Path, out: Path, extra: list[str], env: dict) -> dict:
    """One `dpiqa score` process; returns its CPU seconds (kernel's count), wall seconds and manifest."""
    cmd = [sys.executable, "-m", "dpiqa.jobs.cli", "score", "--input", str(shards), "--output", str(out)]
    cmd += ["--model", "null", "--executor", "ray", "--address", address, *extra]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, env={**env, "PYTHONPATH": str(code)}, cwd=code, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    if status != 0:
        raise RuntimeError(f"{cmd} failed ({status}):\n{stderr.decode()[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {"cpu": usage.ru_utime + usage.ru_stime, "wall": wall, "manifest": manifest}


class RssSampler:
    """The peak RSS of the scoring workers (processes titled `ray::_UnitActor` or, in the baseline, Ray Data's
    `ray::MapWorker`/`ShardWriter`) started by this benchmark's cluster (descendants of its raylets: other Ray
    instances on the machine are not counted), sampled every 0.2 s."""

    def __init__(self, raylets: list[int]) -> None:
        self.raylets = raylets
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.2):
            procs = []
            for pid in self.raylets:
                try:
                    procs += psutil.Process(pid).children(recursive=True)
                except psutil.NoSuchProcess:
                    pass
            for p in procs:
                try:
                    title, rss = " ".join(p.cmdline()), p.memory_info().rss
                except psutil.Error:
                    continue
                for kind in ("_UnitActor", "ShardWriter", "MapWorker"):
                    if f"ray::{kind}" in title:
                        self.peak[kind] = max(self.peak.get(kind, 0), rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def baseline_checkout(ref: str, into: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(into), ref], check=True, capture_output=True
    )
    return into


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default="100,1000,10000", help="shard counts for the driver's cost (current)")
    ap.add_argument("--baseline-shards", default="100,1000", help="shard counts for the baseline ('' to skip it)")
    ap.add_argument("--baseline-ref", default=BASELINE_REF)
    ap.add_argument("--map-shard-images", type=int, default=2000, help="images per shard for the memory run")
    ap.add_argument("--map-shards", type=int, default=3)
    ap.add_argument("--throughput-images", type=int, default=256, help="images per shard for images/s")
    ap.add_argument("--throughput-shards", type=int, default=16)
    ap.add_argument("--nodes", default="1,2", help="worker nodes for the images/s rows")
    ap.add_argument("--cpus-per-node", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here too")
    args = ap.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    from dpiqa.version import machine

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", "DPIQA_FAILPOINTS": ""}
    tmp = Path(tempfile.mkdtemp(prefix="dpiqa-scale-"))
    versions = {"current": REPO}
    counts = {"current": [int(n) for n in args.shards.split(",") if n]}
    if args.baseline_shards:
        versions["baseline"] = baseline_checkout(args.baseline_ref, tmp / "baseline")
        counts["baseline"] = [int(n) for n in args.baseline_shards.split(",") if n]
    lines = [
        f"`python bench/scale.py --shards {args.shards} --baseline-shards {args.baseline_shards}` "
        f"(baseline = `{args.baseline_ref}`; current = this checkout). `dpiqa score --model null`, one image per "
        "shard, each run a fresh driver process on a Ray cluster started beforehand (head without CPUs, "
        f"{args.cpus_per_node} CPU per worker node).",
        "",
    ]
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        cluster.add_node(num_cpus=args.cpus_per_node)
        cluster.wait_for_nodes()
        address = cluster.address
        # -- driver CPU per shard -------------------------------------------------------------------
        lines += [
            "| version | shards | driver CPU s | wall s | driver CPU ms per additional shard | results received per shard |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        slopes: dict[str, list[float]] = {}
        for version, code in versions.items():
            prev = None
            for n in counts[version]:
                shards = tmp / f"shards-{n}"
                if not shards.exists():
                    build_shards(shards, n, 1)
                out = tmp / f"out-{version}-{n}"
                r = run_driver(code, address, shards, out, [], env)
                shutil.rmtree(out)
                slope = (r["cpu"] - prev[1]) / (n - prev[0]) * 1000 if prev else None
                if slope is not None:
                    slopes.setdefault(version, []).append(slope)
                driver = r["manifest"].get("driver", {})
                received = (driver.get("results", 0) + driver.get("progress_polls", 0)) / n if driver else None
                lines.append(
                    f"| {version} | {n:,} | {r['cpu']:.1f} | {r['wall']:.1f} | "
                    f"{f'{slope:.2f}' if slope is not None else '-'} | "
                    f"{f'{received:.2f}' if received is not None else 'every block'} |"
                )
                print(lines[-1], flush=True)
                prev = (n, r["cpu"])
        lines.append("")
        if "current" in slopes and len(slopes["current"]) > 1:
            lo, hi = min(slopes["current"]), max(slopes["current"])
            lines.append(f"Current: driver CPU per additional shard from {lo:.2f} to {hi:.2f} ms ({hi / lo:.2f}x).")
        if "baseline" in slopes and "current" in slopes:
            lines.append(
                f"Baseline / current, driver CPU per additional shard: {slopes['baseline'][-1]:.1f} / "
                f"{slopes['current'][0]:.2f} ms = {slopes['baseline'][-1] / slopes['current'][0]:.0f}x."
            )
        lines.append("")
        # -- worker memory with maps and a slow first unit ------------------------------------------
        lines += [
            f"Peak RSS of the scoring workers, `--write-maps` (64 KiB per image), {args.map_shards} shards of "
            f"{args.map_shard_images:,} images ({args.map_shard_images * 64 // 1024} MiB of maps each), the first "
            "unit started 20 s late (the shards after it go on meanwhile):",
            "",
            "| version | worker kind | peak RSS MiB |",
            "| --- | --- | ---: |",
        ]
        big = tmp / "big"
        build_shards(big, args.map_shards, args.map_shard_images)
        for version, code in versions.items():
            slow = {**env, "DPIQA_FAILPOINTS": "unit.start=sleep:20@1"} if version == "current" else env
            raylets = [n.all_processes["raylet"][0].process.pid for n in cluster.list_all_nodes()]
            with RssSampler(raylets) as sampler:
                run_driver(code, address, big, tmp / f"maps-{version}", ["--write-maps"], slow)
            for kind, rss in sorted(sampler.peak.items()):
                lines.append(f"| {version} | {kind} | {rss / 2**20:.0f} |")
                print(lines[-1], flush=True)
        lines.append("")
        # -- images/s on one and two nodes ----------------------------------------------------------
        lines += ["| version | worker nodes | images/s |", "| --- | ---: | ---: |"]
        many = tmp / "many"
        build_shards(many, args.throughput_shards, args.throughput_images)
        nodes_now = 1
        for nodes in [int(n) for n in args.nodes.split(",")]:
            while nodes_now < nodes:
                cluster.add_node(num_cpus=args.cpus_per_node)
                nodes_now += 1
            cluster.wait_for_nodes()
            for version, code in versions.items():
                extra = ["--workers", str(nodes)] if version == "current" else []
                r = run_driver(code, address, many, tmp / f"rate-{version}-{nodes}", extra, env)
                rate = r["manifest"]["rows"] / r["manifest"]["seconds"]
                lines.append(f"| {version} | {nodes} | {rate:.0f} |")
                print(lines[-1], flush=True)
        lines += ["", f"Machine: {machine()}"]
    finally:
        ray.shutdown()
        try:
            cluster.shutdown()
        except Exception:
            pass
        if "baseline" in versions:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(versions["baseline"])])
        shutil.rmtree(tmp, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
