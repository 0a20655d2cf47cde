"""The scoring run: shard list -> read -> decode -> score -> per-shard Parquet, resumable, with a manifest."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from dpiqa import models, storage
from dpiqa.engine.executor import choose_executor
from dpiqa.engine.executor.base import Executor
from dpiqa.engine.output import OutputLocation, RunResult
from dpiqa.engine.runner import ShardJob, Tally, pending_shards, run_shard_job
from dpiqa.engine.schema import SCORES_SCHEMA
from dpiqa.engine.stages.base import Stage
from dpiqa.engine.stages.decode import DEFAULT_MAX_PIXELS, DecodeStage
from dpiqa.engine.stages.score import ScoreStage
from dpiqa.engine.stages.source import SourceStage
from dpiqa.engine.stages.write import ShardFact, ShardWriter, WriterLost, WriteStage, owner
from dpiqa.models.run_options import RunOptions
from dpiqa.version import code_version

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
        run: how the model runs (`RunOptions`: device, precision, channels_last, compile, runtime, and the
            torch threads per CPU actor, by default the worker's cores shared among its actors).
        overwrite: replace another configuration's results at `output`.
        write_maps: also write quality maps (float16) to `maps/`, for distillation.
        max_pixels: larger images are `too_large` rows.
        actors: scoring actors (default: one per GPU of the cluster, else 1).
        chunk_size: samples per block from the shard reader.
        retries: fresh pipelines over the unfinished shards after Ray gives up on a lost node or worker.
        decode_on: where JPEGs are decoded: `cpu` (PIL in the decoder tasks), `device` (the scoring actor's
            device: nvJPEG on a GPU, libjpeg on a CPU), or `auto`: the device for a student on GPUs (PIL
            on one core cannot keep up with it), the CPU otherwise.
        skip_missing: score the shards that exist when a brace pattern or list names some that do not.
        writers: shard writers (default: one per node of the cluster; one on the local executor).
        storage_options: fsspec options for input and output.
    """

    input: str
    output: str
    model: str = "demo"
    batch_size: int = 32
    run: RunOptions = field(default_factory=RunOptions)
    overwrite: bool = False
    write_maps: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    actors: int | None = None
    chunk_size: int = 64
    retries: int = 3
    decode_on: str = "auto"
    skip_missing: bool = False
    writers: int | None = None
    storage_options: dict | None = None

    def identity(self, info: models.ModelInfo, stages: list[Stage]) -> dict:
        """What makes two runs' rows comparable: the same identity may resume into the same output."""
        ident = info.identity()
        ident.pop("model")  # the same checkpoint under another path or URL is the same model
        decode = next(s for s in stages if isinstance(s, DecodeStage))
        return {
            **ident,
            "precision": self.run.precision,
            "write_maps": self.write_maps,
            "max_pixels": self.max_pixels,
            "jpeg_decoder": "device" if decode.defer_jpeg else "pil",
            "schema_version": SCHEMA_VERSION,
        }


ScoreResult = RunResult


def build_stages(config: ScoreConfig, info: models.ModelInfo, gpus: float) -> list[Stage]:
    """read -> decode -> score, with resources from the config and the cluster's GPU count."""
    run = config.run
    use_gpu = info.runtime == "torch" and (run.device.startswith("cuda") or (run.device == "auto" and gpus > 0))
    actors = config.actors or (max(1, int(gpus)) if use_gpu else 1)
    run = run.replace(
        device=run.device if run.device.startswith("cuda") else "cuda" if use_gpu else "cpu",
        threads=run.threads or (None if use_gpu else _cpu_threads(actors)),
    )
    score = ScoreStage(
        config.model,
        run,
        batch_size=config.batch_size,
        num_gpus=1.0 if use_gpu else 0.0,
        concurrency=actors,
        write_maps=config.write_maps,
    )
    source = SourceStage(chunk_size=config.chunk_size, storage_options=config.storage_options)
    source.batch_size = 1
    if config.decode_on not in ("auto", "cpu", "device"):
        raise ValueError(f"decode_on must be auto, cpu or device, not {config.decode_on!r}")
    on_device = config.decode_on == "device" or (
        config.decode_on == "auto" and use_gpu and info.architecture == "dpiqa-student"
    )
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


def run_score(config: ScoreConfig, executor: Executor | str = "auto", address: str | None = None) -> ScoreResult:
    """Score every shard of `config.input` that has no completion marker at `config.output`.

    Everything the user named (model, shards, output) is checked before Ray starts or anything is written.
    The rows are written by shard writers where they are scored (`dpiqa.engine.stages.write`); the driver hears
    one fact per shard. The manifest records the parts of start-up (`startup`).

    Args:
        config: the run.
        executor: an executor, or its kind (`auto`, `local`, `ray`: `dpiqa.engine.executor.choose_executor`, which
            needs the shard list and so decides after the checks).
        address: Ray cluster address for a `ray` or `auto` executor.

    Raises:
        engine.output.ForeignOutputError: the output holds another configuration's results.
        ValueError: bad input (no shard, a missing shard, an output inside the input, a damaged model).
    """
    t0 = time.monotonic()
    storage.RETRIES.take()  # what an earlier run in this process left is not this run's
    info = models.describe(config.model)
    models.check_runtime(config.model, info.runtime, config.run)
    shards = storage.list_shards(config.input, config.storage_options, skip_missing=config.skip_missing)
    output = OutputLocation(config.output, config.storage_options)
    storage.refuse_overlap(shards, output.url, config.storage_options)
    output.check_writable()
    if isinstance(executor, str):
        executor = choose_executor(executor, address, shards, config.storage_options, "score")
    startup = {"checks_seconds": round(time.monotonic() - t0, 3)}
    gpus, startup["ray_start_seconds"] = _cluster_gpus(executor)
    stages = build_stages(config, info, gpus)
    identity = config.identity(info, stages)
    digest = output.claim(identity, overwrite=config.overwrite, model=config.model)
    todo, skipped = pending_shards(output, shards)
    log.info(
        "score: %d shards, %d already done, %d to do; model %s (%s)",
        len(shards.urls),
        skipped,
        len(todo),
        config.model,
        info.checkpoint_hash,
    )
    job = ScoreJob(config, executor, stages, output, shards.names, info, digest, startup)
    settings = {k: v for k, v in asdict(config).items() if k != "storage_options"}
    return run_shard_job(job, shards, output, todo, skipped, settings, digest, config.retries, started=t0)


class ScoreJob(ShardJob):
    """`score` as a shard job: the read -> decode -> score pipeline on the executor, rows handed to shard
    writers (Ray actors spread over the nodes, or one in-process writer on the local executor)."""

    label = "score"
    unit = "images"

    def __init__(
        self,
        config: ScoreConfig,
        executor: Executor,
        stages: list[Stage],
        output: OutputLocation,
        names: dict[str, str],
        info: models.ModelInfo,
        digest: str,
        startup: dict,
    ) -> None:
        self.config, self.executor, self.stages, self.output = config, executor, stages, output
        self.names, self.info, self.digest = names, info, digest
        self.startup = startup
        self.reader_retries = 0

    def process(self, shards: list[str], fact: Callable[[ShardFact], None], units: Callable[[int], None]) -> None:
        n = max(1, min(len(shards), self.config.writers or self.executor.default_writers()))
        metadata = {**self.info.identity(), "config_hash": self.digest, "code_version": code_version()}
        map_shape = self.info.map_shape if self.config.write_maps else None
        where = (self.output.url, self.config.storage_options)
        # Each writer is told only the names of the shards it owns: its constructor stays small at 10^5 shards.
        owned = [{u: self.names[u] for u in shards if owner(u, n) == k} for k in range(n)]
        writers = self.executor.start(
            ShardWriter, [(where, names, metadata, self.config.model, self.digest, map_shape) for names in owned]
        )
        stop = threading.Event()
        lost = []

        def drain(wait: bool) -> None:
            for slot, report in enumerate(self.executor.call(writers, "drain", wait)):
                if report is None:
                    lost.append(slot)
                for f in (report or {}).get("facts", []):
                    self.reader_retries += f["retries"]
                    fact(ShardFact(**f))

        def poll() -> None:  # shard facts while the pipeline runs, whenever blocks reach the driver
            while not stop.wait(2.0):
                drain(False)

        poller = threading.Thread(target=poll, name="score-writer-poll", daemon=True)
        poller.start()
        failure: Exception | None = None
        try:
            self.executor.run(
                [{"shard": url} for url in shards],
                [*self.stages, WriteStage(writers)],
                lambda batch: units(int(batch["images"].sum())),
            )
        except Exception as exc:  # noqa: BLE001 - raised below, as it is or as the writer loss that caused it
            failure = exc
        finally:
            stop.set()
            poller.join()
            drain(True)  # what was finished, also when the attempt failed
            self.executor.stop(writers)
        if lost:  # their shards in flight are gone with them: another attempt writes them again
            # (the pipeline's own error, if any, is the scoring actor's failed hand-off to the dead writer)
            raise WriterLost(f"{len(set(lost))} of {n} shard writers died (their process or node ended)") from failure
        if failure is not None:
            raise failure

    def retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, WriterLost) or self.executor.retryable(exc)

    def manifest(self, tally: Tally) -> dict:
        # What the shard readers reported (each process's retries, taken once) plus this process's rest
        # (listing, writes) since the readers last took.
        io_retries = self.reader_retries + storage.RETRIES.take()
        startup = {
            **self.startup,
            "first_row_seconds": tally.first_output,
            "executor": "local" if self.executor.in_process else "ray",
        }
        return {
            "model": self.info.identity(),
            "io_retries": io_retries,
            "columns": SCORES_SCHEMA.names,
            "startup": startup,
        }


def _cluster_gpus(executor: Executor) -> tuple[float, float]:
    """GPUs the scoring actors can use, and the seconds it took to start or reach Ray (0 in this process).
    On Ray they are the cluster's (its resources, never the driver's own hardware); in this process, this
    machine's."""
    from dpiqa.engine.executor.ray_data import RayDataExecutor, init_ray

    if not isinstance(executor, RayDataExecutor):
        import torch

        return float(torch.cuda.device_count()), 0.0
    import ray

    seconds = init_ray(executor.address, executor.num_cpus)
    return float(ray.cluster_resources().get("GPU", 0)), round(seconds, 3)
