"""The scoring run: shard list -> read -> decode -> score -> per-shard Parquet, resumable, with a manifest."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import models
from engine import io
from engine.executor.base import Executor
from engine.output import MANIFEST, OutputLocation, RunResult
from engine.progress import Progress
from engine.schema import SCORES_SCHEMA
from engine.stages.base import Batch, Stage
from engine.stages.decode import DEFAULT_MAX_PIXELS, DecodeStage
from engine.stages.score import ScoreStage
from engine.stages.source import SourceStage
from engine.stages.write import ParquetWriteStage
from engine.version import code_version

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


@dataclass
class ScoreConfig:
    """Everything a `score` run depends on.

    Args:
        input: shard specification (brace pattern, glob, prefix/folder, or a text file of URLs).
        output: output folder or URL.
        model: named configuration, shipped name (`demo`), checkpoint folder, URL or Hub id.
        batch_size: images per model call.
        device: `auto`, `cpu` or `cuda`.
        precision: `auto`, `fp32`, `bf16`, `fp16`.
        overwrite: replace another configuration's results at `output`.
        write_maps: also write quality maps (float16) to `maps/`, for distillation.
        max_pixels: larger images are `too_large` rows.
        actors: scoring actors (default: one per GPU of the cluster, else 1).
        threads: torch threads per CPU actor (default: the worker's cores / actors).
        chunk_size: samples per block from the shard reader.
        retries: fresh pipelines over the unfinished shards after Ray gives up on a lost node or worker.
        decode_on: where JPEGs are decoded: `cpu` (PIL in the decoder tasks), `device` (the scoring actor's
            device: nvJPEG on a GPU, libjpeg on a CPU), or `auto`: the device for a student on GPUs (PIL
            on one core cannot keep up with it), the CPU otherwise.
        channels_last, compile: inference fast paths.
        runtime: `auto` (onnxruntime on CPU actors for an ONNX export from `dpiqa export`, else torch),
            `torch` or `onnx` (refuses a model that does not run on it).
        skip_missing: score the shards that exist when a brace pattern or list names some that do not.
        storage_options: fsspec options for input and output.
    """

    input: str
    output: str
    model: str = "demo"
    batch_size: int = 32
    device: str = "auto"
    precision: str = "auto"
    overwrite: bool = False
    write_maps: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    actors: int | None = None
    threads: int | None = None
    chunk_size: int = 64
    retries: int = 3
    decode_on: str = "auto"
    channels_last: bool = False
    compile: bool = False
    runtime: str = "auto"
    skip_missing: bool = False
    storage_options: dict | None = None

    def identity(self, info: models.ModelInfo, stages: list[Stage]) -> dict:
        """What makes two runs' rows comparable: the same identity may resume into the same output."""
        ident = info.identity()
        ident.pop("model")  # the same checkpoint under another path or URL is the same model
        decode = next(s for s in stages if isinstance(s, DecodeStage))
        return {**ident, "precision": self.precision, "write_maps": self.write_maps,
                "max_pixels": self.max_pixels, "jpeg_decoder": "device" if decode.defer_jpeg else "pil",
                "schema_version": SCHEMA_VERSION}


ScoreResult = RunResult


def build_stages(config: ScoreConfig, info: models.ModelInfo, gpus: float) -> list[Stage]:
    """read -> decode -> score, with resources from the config and the cluster's GPU count."""
    use_gpu = info.runtime == "torch" and (config.device == "cuda" or (config.device == "auto" and gpus > 0))
    actors = config.actors or (max(1, int(gpus)) if use_gpu else 1)
    score = ScoreStage(
        config.model, device="cuda" if use_gpu else "cpu", precision=config.precision,
        batch_size=config.batch_size, num_gpus=1.0 if use_gpu else 0.0, concurrency=actors,
        threads=config.threads or (None if use_gpu else _cpu_threads(actors)),
        write_maps=config.write_maps, channels_last=config.channels_last, compile=config.compile,
        runtime=config.runtime,
    )
    source = SourceStage(chunk_size=config.chunk_size, storage_options=config.storage_options)
    source.batch_size = 1
    if config.decode_on not in ("auto", "cpu", "device"):
        raise ValueError(f"decode_on must be auto, cpu or device, not {config.decode_on!r}")
    on_device = config.decode_on == "device" or (
        config.decode_on == "auto" and use_gpu and info.architecture == "dpiqa-student")
    if on_device and info.runtime != "torch":
        raise ValueError(f"--decode-on device needs a torch model; {config.model} runs on {info.runtime}")
    decode = DecodeStage(info.preprocessing, max_pixels=config.max_pixels, defer_jpeg=on_device)
    decode.batch_size = config.batch_size
    return [source, decode, score]


def _cpu_threads(actors: int) -> int:
    """Torch threads per CPU actor: OMP_NUM_THREADS where the user set it, else the cores shared out
    (Ray would give each actor one thread)."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, (os.cpu_count() or 1) // actors)


def run_score(config: ScoreConfig, executor: Executor) -> ScoreResult:
    """Score every shard of `config.input` that has no completion marker at `config.output`.

    Raises:
        engine.output.ForeignOutputError: the output holds another configuration's results.
        ValueError: the input names no shard.
    """
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    retries_before = io.RetryCounter.count
    # Everything the user named is checked before Ray starts or anything is written.
    info = models.describe(config.model)
    models.check_runtime(config.model, info.runtime, config.runtime, device=config.device,
                         precision=config.precision, channels_last=config.channels_last,
                         compile=config.compile)
    shards = io.list_shards(config.input, config.storage_options, skip_missing=config.skip_missing)
    urls, names = shards.urls, shards.names
    output = OutputLocation(config.output, config.storage_options)
    io.refuse_overlap(shards, output.url, config.storage_options)
    output.check_writable()
    gpus = _cluster_gpus(executor)
    stages = build_stages(config, info, gpus)
    identity = config.identity(info, stages)
    digest = output.claim(identity, overwrite=config.overwrite, model=config.model)

    todo, skipped = pending_shards(output, shards)
    log.info("score: %d shards, %d already done, %d to do; model %s (%s)",
             len(urls), skipped, len(todo), config.model, info.checkpoint_hash)

    map_shape = info.map_shape if config.write_maps else None
    metadata = {**info.identity(), "config_hash": digest, "code_version": code_version()}
    writer = ParquetWriteStage(output, names, metadata, config.model, digest, map_shape=map_shape)
    progress = Progress("score", len(todo))
    first_output: list[float] = []

    def sink(batch: Batch) -> None:
        if not first_output:
            first_output.append(time.monotonic() - t0)
        writer(batch)
        written, images = writer.progress()
        progress.update(written, images, failed=len(writer.summary.failed))

    remaining, attempt = todo, 0
    while remaining:
        try:
            executor.run([{"shard": url} for url in remaining], stages, sink)
            break
        except Exception as exc:
            writer.flush()
            remaining = [u for u in remaining if u not in writer.completed and u not in writer.summary.failed]
            attempt += 1
            if not executor.retryable(exc) or attempt > config.retries:
                if executor.retryable(exc):
                    for url in remaining:
                        writer.fail(url, f"incomplete after {attempt} attempts: {type(exc).__name__}: {exc}")
                    break
                raise
            # A node or worker died and Ray Data gave up: start a fresh pipeline over the shards that are
            # not written; their partial rows are dropped (rows are keyed by shard and index, so nothing
            # is counted twice).
            log.warning("score: pipeline failed (%s: %s); attempt %d of %d on %d unfinished shards",
                        type(exc).__name__, str(exc).splitlines()[0][:300], attempt + 1, config.retries + 1,
                        len(remaining))
            for url in remaining:
                writer.reset(url)
    summary = writer.close()
    elapsed = time.monotonic() - t0
    # Retries of this process (listing, writes; and reads when the stages ran here) plus those the
    # shard readers reported from other processes.
    io_retries = io.RetryCounter.count - retries_before + (0 if executor.in_process else summary.io_retries)
    progress.update(summary.shards_written, writer.images_seen, failed=len(summary.failed), force=True)

    manifest = {
        "input": config.input,
        "output": config.output,
        "config": {k: v for k, v in asdict(config).items() if k != "storage_options"},
        "config_hash": digest,
        "model": info.identity(),
        "code_version": code_version(),
        "shards": {"total": len(urls), "skipped_done": skipped, "written": summary.shards_written,
                   "failed": len(summary.failed)},
        "failed_shards": summary.failed,
        "rows": summary.rows,
        "statuses": dict(summary.statuses),
        "io_retries": io_retries,
        "pipeline_attempts": attempt + 1,
        "columns": SCORES_SCHEMA.names,
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(elapsed, 3),
        # until the first scored batch came back: listing, (Ray start,) model load, first batch
        "startup_seconds": round(first_output[0], 3) if first_output else None,
        "images_per_second": round(writer.images_seen / elapsed, 2) if elapsed > 0 else None,
    }
    output.write_json(MANIFEST, manifest)
    if summary.failed:
        log.error("score: %d shard(s) failed:\n  %s", len(summary.failed),
                  "\n  ".join(f"{u}: {e}" for u, e in sorted(summary.failed.items())))
    return ScoreResult(manifest)


def pending_shards(output: OutputLocation, shards: io.ShardList) -> tuple[list[str], int]:
    """The shards without a completion marker, and how many have one. A shard counts as done when a
    marker names its URL under any output name (an earlier run may have named it differently), so no
    run writes one input shard twice into one output.

    Raises:
        ValueError: the output name of a shard holds another shard's results.
    """
    done = output.done()
    by_url = {m.get("shard"): name for name, m in done.items()}
    todo, skipped = [], 0
    for url in shards.urls:
        if url in by_url:
            skipped += 1
            continue
        marker = done.get(shards.names[url])
        if marker is not None:
            raise ValueError(f"{output.url}: output name {shards.names[url]!r} holds the results of "
                             f"{marker.get('shard')}, not of {url}; use a separate --output for this shard set")
        todo.append(url)
    return todo, skipped


def _cluster_gpus(executor: Executor) -> float:
    """GPUs of the Ray cluster (0 for the local executor): decided from cluster resources, never from
    the driver's own hardware."""
    from engine.executor.ray_data import RayDataExecutor, init_ray

    if not isinstance(executor, RayDataExecutor):
        import torch

        return float(torch.cuda.device_count())
    import ray

    init_ray(executor.address, executor.num_cpus)
    return float(ray.cluster_resources().get("GPU", 0))

