"""Latency benchmark of the student and its speed tiers: torch eager, channels_last, onnxruntime, CUDA bf16.

Every tier is the paper's student (map head, 8x64x64 map, 32768->512->512->1 MLP) on another timm backbone,
with seeded random weights, measured through the code `dpiqa score` runs: `dpiqa.models.load_scorer` on a saved
checkpoint (torch) or on its `dpiqa export` folder (onnxruntime), fed uint8 `(B, H, W, 3)` images. Each
(tier, runtime, batch) runs in a fresh process, so that its peak memory is its own: the peak RSS increase
over the process's RSS before the model was loaded (weights + activations + runtime arenas), or torch's
CUDA max allocated on the GPU. Timed calls repeat until `--seconds` have passed (at least `--min-iters`,
at most `--max-iters`); p99 of fewer than 100 calls is close to their maximum, hence `n` in the table.

Example (all tiers at full size; on a 2-core CPU, B7 at 512 takes seconds per image, so limit the run):

    PYTHONPATH=. python bench/latency.py --tiers b7,b0,mobilenetv3 --batch-sizes 1,4 --seconds 5 --threads 2

Use `--threads` to match the cores that are free: torch's OpenMP threads spin while they wait, so more
threads than free cores makes a loaded machine crawl.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dpiqa.models.run_options import RunOptions

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import publish

log = logging.getLogger("bench.latency")

# Speed tiers: the paper's student first (the baseline), then smaller timm backbones.
TIERS = {
    "b7": "efficientnet_b7",
    "b3": "efficientnet_b3",
    "b0": "efficientnet_b0",
    "mobilenetv3": "mobilenetv3_large_100",
    "resnet18": "resnet18",
}
RUNTIMES = {
    "eager": "torch eager, fp32, CPU",
    "channels_last": "torch eager, fp32, CPU, channels_last",
    "onnx": "onnxruntime CPU, fp32 (dpiqa export)",
    "cuda": "torch eager, bf16 autocast, channels_last, CUDA",
}


@dataclass
class Measurement:
    """One (tier, runtime, batch) result; times in milliseconds per call of `batch` images."""

    tier: str
    runtime: str
    batch: int
    n: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    images_per_s: float = float("nan")
    peak_mb: float = float("nan")
    error: str | None = None


def proc_status_mb(field: str) -> float:
    """`VmRSS` (resident set size now) or `VmHWM` (its peak since exec) of this process, from Linux /proc.

    Not `getrusage().ru_maxrss`: Linux carries it over fork and exec, so a child would report its parent's
    peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def measure(spec: dict) -> dict:
    """Run in a fresh process: load the scorer, warm up, time calls; returns a `Measurement` as a dict."""
    import numpy as np
    import torch

    torch.set_num_threads(spec["threads"])
    from dpiqa import models

    runtime, batch = spec["runtime"], spec["batch"]
    images = np.random.default_rng(0).integers(0, 256, (batch, spec["image_size"], spec["image_size"], 3), np.uint8)
    rss_before = proc_status_mb("VmRSS")
    cuda = runtime == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if runtime == "onnx":
        from dpiqa.models.onnx_scorer import OnnxScorer

        scorer = OnnxScorer(spec["model"], threads=spec["threads"])
    else:
        scorer = models.load_scorer(
            spec["model"],
            RunOptions(
                device="cuda" if cuda else "cpu", precision="bf16" if cuda else "fp32", channels_last=runtime != "eager"
            ),
        )
    for _ in range(spec["warmup"]):
        scorer(images)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < spec["max_iters"] and (
        len(times) < spec["min_iters"] or time.perf_counter() - start < spec["seconds"]
    ):
        t0 = time.perf_counter()
        scorer(images)  # returns numpy scores: a GPU run is synchronised by the copy back
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = proc_status_mb("VmHWM") - rss_before
    return asdict(
        Measurement(
            spec["tier"],
            runtime,
            batch,
            n=len(times),
            p50_ms=float(np.percentile(ms, 50)),
            p99_ms=float(np.percentile(ms, 99)),
            images_per_s=batch * len(times) / float(np.sum(times)),
            peak_mb=float(peak),
        )
    )


def run_child(spec: dict, timeout: float) -> Measurement:
    """`measure(spec)` in a fresh Python process with its OpenMP pool sized to the thread budget."""
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return Measurement(spec["tier"], spec["runtime"], spec["batch"], error=f"timed out after {timeout:.0f} s")
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return Measurement(spec["tier"], spec["runtime"], spec["batch"], error=f"exit {proc.returncode}: {last}")
    return Measurement(**json.loads(proc.stdout.strip().splitlines()[-1]))


def host() -> dict:
    """The machine and software the numbers come from, and the load average now."""
    import onnxruntime
    import timm

    from dpiqa.version import machine

    return {
        "machine": machine(),
        "onnxruntime": onnxruntime.__version__,
        "timm": timm.__version__,
        "load_average": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def prepare(tier: str, image_size: int, root: Path, onnx: bool) -> tuple[str, str | None, int]:
    """Save a seeded random-weights student of `tier` and its ONNX export; returns (ckpt, export, params)."""
    import torch

    from dpiqa.models.export import export_onnx
    from dpiqa.models.student import DPIQAStudent, StudentConfig

    torch.manual_seed(0)
    student = DPIQAStudent.from_config(StudentConfig(backbone=TIERS[tier], image_size=image_size))
    params = sum(p.numel() for p in student.parameters())
    ckpt = root / tier / "ckpt"
    student.save_pretrained(str(ckpt), card={"note": "random weights, latency benchmark"})
    del student
    export = None
    if onnx:
        t0 = time.monotonic()
        export_onnx(str(ckpt), str(root / tier / "onnx"), validate_batch=2)
        log.info("%s: exported to ONNX in %.0f s", tier, time.monotonic() - t0)
        export = str(root / tier / "onnx")
    return str(ckpt), export, params


def markdown(
    results: list[Measurement],
    params: dict[str, int],
    baseline: str,
    args: argparse.Namespace,
    host: dict,
    host_after: dict,
    seconds: float,
) -> str:
    """The table, with each tier's rate against the baseline tier and each runtime's against torch eager."""
    rate = {(m.tier, m.runtime, m.batch): m.images_per_s for m in results if m.error is None}

    def ratio(num: tuple, den: tuple) -> str:
        return f"{rate[num] / rate[den]:.2f}x" if num in rate and den in rate else "-"

    lines = [
        f"Command: `{' '.join(shlex.quote(a) for a in args.argv)}` ({seconds / 60:.1f} min)",
        "",
        "Machine: " + "; ".join(f"{k}: {v}" for k, v in host.items() if k != "load_average"),
        f"Load average (1/5/15 min) at start: {host['load_average']}; at end: {host_after['load_average']}",
        f"Threads: {args.threads} (torch intra-op and onnxruntime intra-op); image size {args.image_size}; "
        "random weights; uint8 images in, scores out (preprocessing included).",
        "",
        "Runtimes: " + "; ".join(f"`{r}` = {RUNTIMES[r]}" for r in args.runtimes),
        "",
        "| tier | backbone | params (M) | runtime | batch | n | p50 ms | p99 ms | img/s | peak MB "
        f"| vs {baseline} "
        "| vs eager |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in results:
        head = f"| {m.tier} | {TIERS[m.tier]} | {params[m.tier] / 1e6:.1f} | {m.runtime} | {m.batch} |"
        if m.error:
            lines.append(f"{head} error: {m.error} | | | | | | |")
            continue
        key = (m.tier, m.runtime, m.batch)
        lines.append(
            f"{head} {m.n} | {m.p50_ms:.1f} | {m.p99_ms:.1f} | {m.images_per_s:.2f} | {m.peak_mb:.0f} | "
            f"{ratio(key, (baseline, m.runtime, m.batch))} | {ratio(key, (m.tier, 'eager', m.batch))} |"
        )
    lines += [
        "",
        f"`vs {baseline}`: images/s over the {baseline} tier's at the same runtime and batch; `vs eager`: "
        "images/s over torch eager at the same tier and batch. `peak MB`: peak RSS increase of the process "
        "(CPU) or CUDA max allocated (GPU).",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiers", default=",".join(TIERS), help=f"comma-separated, of {', '.join(TIERS)} (default: all)")
    p.add_argument("--baseline", default="b7", help="the tier others are compared with (default: b7, the paper's)")
    p.add_argument(
        "--runtimes",
        default=None,
        help=f"comma-separated, of {', '.join(RUNTIMES)} (default: all CPU ones, plus cuda with a GPU)",
    )
    p.add_argument("--image-size", type=int, default=512, help="input side (default: 512, the paper's)")
    p.add_argument("--batch-sizes", default="1,16", help="comma-separated (default: 1,16)")
    p.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="CPU threads per measurement (default: the cores this process may use)",
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default: 2)")
    p.add_argument("--seconds", type=float, default=10.0, help="timed calls run this long (default: 10)")
    p.add_argument("--min-iters", type=int, default=3, help="at least this many timed calls (default: 3)")
    p.add_argument("--max-iters", type=int, default=200, help="at most this many timed calls (default: 200)")
    p.add_argument("--timeout", type=float, default=900, help="seconds before one measurement is abandoned")
    p.add_argument("--output", default=None, help="also write the markdown table here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = ["bench/latency.py", *argv]
    args.tiers = [t for t in args.tiers.split(",") if t]
    unknown = [t for t in args.tiers if t not in TIERS]
    if unknown:
        p.error(f"unknown tiers {unknown}; known: {', '.join(TIERS)}")
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.runtimes is None:
        import torch

        args.runtimes = ["eager", "channels_last", "onnx"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        args.runtimes = [r for r in args.runtimes.split(",") if r]
    unknown = [r for r in args.runtimes if r not in RUNTIMES]
    if unknown:
        p.error(f"unknown runtimes {unknown}; known: {', '.join(RUNTIMES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return 0
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    import torch

    if "cuda" in args.runtimes and not torch.cuda.is_available():
        log.warning("no CUDA GPU here: skipping the cuda runtime")
        args.runtimes.remove("cuda")
    torch.set_num_threads(args.threads)
    host_before = host()
    log.info("machine: %s", host_before)
    t_start = time.monotonic()
    results: list[Measurement] = []
    params: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="dpiqa-bench-") as tmp:
        for tier in args.tiers:
            ckpt, export, params[tier] = prepare(tier, args.image_size, Path(tmp), "onnx" in args.runtimes)
            for runtime in args.runtimes:
                for batch in args.batch_sizes:
                    spec = {
                        "tier": tier,
                        "runtime": runtime,
                        "batch": batch,
                        "image_size": args.image_size,
                        "model": export if runtime == "onnx" else ckpt,
                        "threads": args.threads,
                        "warmup": args.warmup,
                        "seconds": args.seconds,
                        "min_iters": args.min_iters,
                        "max_iters": args.max_iters,
                    }
                    m = run_child(spec, args.timeout)
                    results.append(m)
                    log.info(
                        "%s %s batch %d: %s",
                        tier,
                        runtime,
                        batch,
                        m.error
                        or f"p50 {m.p50_ms:.1f} ms, p99 {m.p99_ms:.1f} ms (n={m.n}), "
                        f"{m.images_per_s:.2f} img/s, "
                        f"peak {m.peak_mb:.0f} MB",
                    )
    baseline = args.baseline if args.baseline in args.tiers else args.tiers[0]
    text = markdown(results, params, baseline, args, host_before, host(), time.monotonic() - t_start)
    publish(text, args.output)
    return 1 if any(m.error for m in results) else 0


if __name__ == "__main__":
    sys.exit(main())
