"""Benchmark on one GPU: model-only throughput of the teacher and the student with the fast paths off and
on, and `dpiqa score` end to end on a local corpus of real-size JPEG shards; prints one table with the
ratios (end to end / model only), where the time goes, the card and the versions.

    python bench/gpu.py [--images 4096] [--output bench/results/gpu-<card>.md]
    python bench/gpu.py --smoke          # tiny models on the CPU: checks the script itself, no numbers

Model-only: random weights, bf16 autocast, batches already on the GPU, timed with CUDA events after a
warm-up. The teacher's fast path is the prompt context's cross-attention keys/values computed once
(`prepare_for_inference`) plus channels_last; the student's is channels_last plus torch.compile.
End to end: `dpiqa score` on a local Ray over JPEG shards (~683x512, as the spec's decode anchors), the
student with its JPEGs decoded on the GPU (nvJPEG), the teacher with PIL decoders on the CPU cores.
Break-down: PIL decode rate on all cores, nvJPEG batch decode rate, host-to-device copy rate.

On the lent GPU machine (no diffusers/ray/webdataset in its image) carry the bundle that
`../shared/tools/device-bundle.sh` builds and start with
`mkdir -p /tmp/site && tar xzf .device-bundle/site.tgz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from dpiqa.models.run_options import RunOptions

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import publish  # noqa: E402
from dpiqa.version import machine  # noqa: E402


def corpus(directory: Path, images: int, per_shard: int = 256, size: tuple[int, int] = (683, 512)) -> Path:
    """JPEG shards of `size` cut from scikit-image's photographs (quality 90)."""
    from PIL import Image

    from bench.engine_overhead import photographs

    rng = np.random.default_rng(0)
    sources = photographs()
    directory.mkdir(parents=True, exist_ok=True)
    for s in range(max(1, images // per_shard)):
        path = directory / f"{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                src = sources[rng.integers(len(sources))]
                img = Image.fromarray(src).resize(size, Image.Resampling.BICUBIC)
                buf = io.BytesIO()
                img.save(buf, "JPEG", quality=90)
                info = tarfile.TarInfo(f"s{s:05d}_{i:06d}.jpg")
                info.size = len(buf.getvalue())
                tar.addfile(info, io.BytesIO(buf.getvalue()))
    return directory


def model_only(name: str, batch: int, fast: bool, seconds: float, device: str, compile_student: bool) -> float:
    """Images/s of the model alone on `device` (bf16 on CUDA), batches resident on the device."""
    import torch

    from dpiqa import models
    from dpiqa.models.scorer import Scorer

    model = models.build(name, device="cpu")
    is_teacher = model.architecture == "dpiqa-teacher"
    scorer = Scorer(
        model,
        RunOptions(
            device=device, precision="auto", channels_last=fast, compile=fast and compile_student and not is_teacher
        ),
        prepare=fast,
    )
    h, w = scorer.preprocessing.size
    images = torch.randint(0, 256, (batch, h, w, 3), dtype=torch.uint8, device=device)
    for _ in range(3):
        scorer(images)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        scorer(images)
        n += batch
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def _pil_decode(blobs: list[bytes]) -> int:
    from dpiqa.engine.stages.decode import decode_image
    from dpiqa.models.preprocessing import Preprocessing

    pre = Preprocessing(size=(512, 512))
    for b in blobs:
        decode_image(b, pre)
    return len(blobs)


def decode_rates(shard: Path, device: str) -> dict[str, float]:
    """PIL on every core, and the device decoder in batches (nvJPEG on CUDA)."""
    import torch

    from dpiqa.engine.stages.device_decode import decode_on_device
    from dpiqa.models.preprocessing import Preprocessing

    with tarfile.open(shard) as tar:
        blobs = [tar.extractfile(m).read() for m in tar.getmembers()]
    cores = os.cpu_count() or 1
    chunks = [blobs[i::cores] for i in range(cores)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(cores) as pool:
        done = sum(pool.map(_pil_decode, chunks))
    rates = {f"PIL decode+resize, {cores} cores": done / (time.perf_counter() - t0)}
    pre = Preprocessing(size=(512, 512))
    decode_on_device(blobs[:64], pre, torch.device(device))
    t0 = time.perf_counter()
    for i in range(0, len(blobs), 128):
        decode_on_device(blobs[i : i + 128], pre, torch.device(device))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    rates[f"device decode+resize ({device})"] = len(blobs) / (time.perf_counter() - t0)
    if device.startswith("cuda"):
        x = torch.empty((256, 512, 512, 3), dtype=torch.uint8).pin_memory()
        t0 = time.perf_counter()
        for _ in range(10):
            x.to(device, non_blocking=True)
        torch.cuda.synchronize()
        rates["host-to-device copy of uint8 512x512 images"] = 2560 / (time.perf_counter() - t0)
    return rates


def end_to_end(model: str, shards: Path, out: Path, batch: int, decode_on: str, extra: list[str]) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "dpiqa.jobs.cli",
        "score",
        "--input",
        str(shards),
        "--output",
        str(out),
        "--model",
        model,
        "--batch-size",
        str(batch),
        "--decode-on",
        decode_on,
        "--overwrite",
        *extra,
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"dpiqa score failed:\n{run.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    steady = (manifest["rows"] - batch) / max(manifest["seconds"] - manifest["startup_seconds"], 1e-9)
    return {
        "rows": manifest["rows"],
        "seconds": manifest["seconds"],
        "startup": manifest["startup_seconds"],
        "steady": steady,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--seconds", type=float, default=20.0, help="per model-only measurement")
    ap.add_argument("--teacher-batch", type=int, default=32)
    ap.add_argument("--student-batch", type=int, default=128)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile for the student")
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU, to check the script")
    ap.add_argument("--output", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    import torch

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cpu" and not args.smoke:
        raise SystemExit("no CUDA GPU visible: run on a GPU machine, or --smoke to check the script")
    teacher, student = (
        ("dpiqa-teacher-tiny", "dpiqa-student-tiny") if args.smoke else ("dpiqa-teacher", "dpiqa-student")
    )
    images = 256 if args.smoke else args.images
    seconds = 2.0 if args.smoke else args.seconds
    work = args.workdir or Path(tempfile.mkdtemp(prefix="dpiqa-gpu-"))
    shards = corpus(work / "corpus", images, per_shard=128 if args.smoke else 256)

    rows = []
    for name, batch in ((teacher, args.teacher_batch), (student, args.student_batch)):
        plain = model_only(name, batch, False, seconds, device, not args.no_compile)
        fast = model_only(name, batch, True, seconds, device, not args.no_compile)
        rows.append((name, batch, plain, fast))
    rates = decode_rates(next(shards.glob("*.tar")), device)
    gpu_flags = [] if device == "cpu" else ["--device", "cuda", "--precision", "bf16", "--channels-last"]
    e2e_teacher = end_to_end(teacher, shards, work / "out-teacher", args.teacher_batch, "cpu", gpu_flags)
    student_flags = gpu_flags + ([] if args.no_compile or device == "cpu" else ["--compile"])
    e2e_student = end_to_end(student, shards, work / "out-student", args.student_batch, "device", student_flags)

    lines = [
        f"# GPU benchmark ({'smoke run, tiny models on the CPU' if args.smoke else 'one GPU'})",
        "",
        f"machine: {machine()}",
        "",
        "| model | batch | model-only plain img/s | model-only fast img/s | "
        "fast / plain | dpiqa score end to end img/s (steady) | end to end / model-only fast |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (name, batch, plain, fast), e2e in zip(rows, (e2e_teacher, e2e_student), strict=True):
        lines.append(
            f"| {name} | {batch} | {plain:.1f} | {fast:.1f} | {fast / plain:.2f} | {e2e['steady']:.1f} | "
            f"{e2e['steady'] / fast:.2f} |"
        )
    lines += ["", "Where the time goes (rates of each part alone, images/s):", ""]
    lines += [f"- {k}: {v:.0f}" for k, v in rates.items()]
    lines += [
        "",
        f"End to end includes Ray start and model load: teacher {e2e_teacher['startup']:.1f} s, "
        f"student {e2e_student['startup']:.1f} s before the first scored batch; {images} images.",
    ]
    publish("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
