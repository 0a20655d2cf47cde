"""The scoring run: shard list -> units of one shard, each read, decoded, scored and written (Parquet, then
marker) inside one worker (`ShardScorer`), resumable, with a manifest."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TypeVar

from dpiqa import models, storage
from dpiqa.engine import schema
from dpiqa.engine.executor import choose_executor
from dpiqa.engine.executor.base import Executor, UnitWorker
from dpiqa.engine.identity import identity_fields, setting
from dpiqa.engine.output import OutputLocation, RunResult
from dpiqa.engine.runner import HANG_SECONDS, ShardJob, Tally, pending_shards, run_shard_job
from dpiqa.engine.schema import SCORES_SCHEMA
from dpiqa.engine.shards.listing import list_shards, refuse_overlap
from dpiqa.engine.stages.base import Stage
from dpiqa.engine.stages.decode import DEFAULT_MAX_PIXELS, DecodeStage
from dpiqa.engine.stages.score import ScoreStage
from dpiqa.engine.stages.source import SourceStage, source_identity
from dpiqa.engine.stages.write import ShardWriter
from dpiqa.errors import UsageError
from dpiqa.failpoints import failpoint
from dpiqa.models.run_options import RunOptions
from dpiqa.version import code_version

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DECODE_ON = ("auto", "cpu", "device")


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
        actors: scoring workers (default: one per GPU of the cluster, else 1).
        chunk_size: samples read and decoded together (bounds memory: a shard is never held whole).
        retries: attempts after the first for a shard whose worker was lost or whose unit raised.
        decode_on: where JPEGs are decoded: `cpu` (PIL in the decoder tasks), `device` (the scoring actor's
            device: nvJPEG on a GPU, libjpeg on a CPU), or `auto`: the device for a student on GPUs (PIL
            on one core cannot keep up with it), the CPU otherwise.
        skip_missing: score the shards that exist when a brace pattern or list names some that do not.
        units_per_worker: shards in flight on each worker at once (one reads and writes while another
            scores).
        decode_threads: threads decoding images in each worker (default: its CPUs, at least 2).
        hang_seconds: a worker that processes no image for this long with shards in flight is replaced and
            its shards run again.
        storage_options: fsspec options for input and output.
    """

    # `setting`: outside the run's identity (`dpiqa.engine.identity`); the model, the precision and the decoder
    # enter it as what they resolve to (`identity`)
    input: str = setting()
    output: str = setting()
    model: str = setting("demo")
    batch_size: int = setting(32)
    run: RunOptions = setting(default_factory=RunOptions)
    overwrite: bool = setting(False)
    write_maps: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    actors: int | None = setting(None)
    chunk_size: int = setting(64)
    retries: int = setting(3)
    decode_on: str = setting("auto")
    skip_missing: bool = setting(False)
    units_per_worker: int = setting(2)
    decode_threads: int | None = setting(None)
    hang_seconds: float = setting(HANG_SECONDS)
    storage_options: dict | None = setting(None)

    def __post_init__(self) -> None:
        if self.decode_on not in DECODE_ON:
            raise UsageError(f"--decode-on must be one of {', '.join(DECODE_ON)}, not {self.decode_on!r}")
        # each count as the command line names it (`actors` is `--workers` there; chunk_size and decode_threads
        # are the API's alone)
        counts = {
            "--batch-size": self.batch_size,
            "--max-pixels": self.max_pixels,
            "--workers": self.actors,
            "--units-per-worker": self.units_per_worker,
            "chunk_size": self.chunk_size,
            "decode_threads": self.decode_threads,
        }
        for name, value in counts.items():
            if value is not None and value < 1:
                raise UsageError(f"{name} must be at least 1, not {value}")
        if self.retries < 0:
            raise UsageError(f"--retries must be >= 0, not {self.retries}")
        if not self.hang_seconds > 0:
            raise UsageError(f"--hang-seconds must be > 0, not {self.hang_seconds}")

    def identity(self, info: models.ModelInfo, stages: list[Stage]) -> dict:
        """What makes two runs' rows comparable: the same identity may resume into the same output."""
        ident = info.identity()
        ident.pop("model")  # the same checkpoint under another path or URL is the same model
        decode = next(s for s in stages if isinstance(s, DecodeStage))
        return {
            **ident,
            **identity_fields(self),
            "precision": self.run.precision,
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
    source = SourceStage(chunk_size=config.chunk_size, storage_options=config.storage_options).with_(batch_size=1)
    on_device = config.decode_on == "device" or (
        config.decode_on == "auto" and use_gpu and info.architecture == "dpiqa-student"
    )
    if on_device and info.runtime != "torch":
        raise ValueError(f"--decode-on device needs a torch model; {config.model} runs on {info.runtime}")
    decode = DecodeStage(info.preprocessing, max_pixels=config.max_pixels, defer_jpeg=on_device).with_(
        batch_size=config.batch_size
    )
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
    Each shard is one unit of work: read, decoded, scored and written (Parquet, then marker) by one worker
    (`ShardScorer`); the driver submits one call and hears one small fact per shard. The manifest records the
    parts of start-up (`startup`) and how many units ran more than once (`retries`).

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
    wall = datetime.now(timezone.utc)
    storage.RETRIES.take()  # what an earlier run in this process left is not this run's
    info = models.describe(config.model)
    models.check_runtime(config.model, info.runtime, config.run, address)
    shards = list_shards(config.input, config.storage_options, skip_missing=config.skip_missing)
    output = OutputLocation(config.output, config.storage_options)
    refuse_overlap(shards, output.url, config.storage_options)
    output.check_writable()
    if isinstance(executor, str):
        executor = choose_executor(executor, address, shards, config.storage_options, "score")
    startup = {"checks_seconds": round(time.monotonic() - t0, 3)}
    gpus, startup["ray_start_seconds"] = _cluster_gpus(executor)
    stages = build_stages(config, info, gpus)
    identity = config.identity(info, stages)
    digest = output.claim(identity, overwrite=config.overwrite, model=config.model)
    output.abort_stale_uploads(wall)
    todo, skipped = pending_shards(output, shards)
    log.info(
        "score: %d shards, %d already done, %d to do; model %s (%s)",
        len(shards.urls),
        skipped,
        len(todo),
        config.model,
        info.checkpoint_hash,
    )
    job = ScoreJob(config, executor, stages, output, info, digest, startup)
    settings = {k: v for k, v in asdict(config).items() if k != "storage_options"}
    score = stages[-1]
    return run_shard_job(
        job,
        executor,
        shards,
        output,
        todo,
        skipped,
        settings,
        digest,
        slots=score.concurrency,
        depth=config.units_per_worker,
        retries=config.retries,
        started=t0,
        hang_seconds=config.hang_seconds,
    )


T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], pool: ThreadPoolExecutor, ahead: int) -> Iterator[R]:
    """`map(fn, items)` on `pool`, up to `ahead` items at once, results in order (Executor.map would consume
    all of `items` at once: a whole shard's bytes in memory)."""
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


class ShardScorer(UnitWorker):
    """One shard per call, whole: read (`SourceStage`), decode (`DecodeStage`, on a thread pool, a few chunks
    ahead), score (`ScoreStage`, one model call at a time), write and commit (`ShardWriter`: Parquet, then the
    marker). Several shards may be in flight in one worker: while one scores, another reads or uploads.

    Args:
        source, decode, score: the stages (the score stage's model is loaded by `setup`, once per worker).
        output: the output location's URL and storage options.
        metadata: the run identity for each file's Parquet key-value metadata.
        model_name: the value of the `model` column.
        config_hash: written into each marker.
        map_shape: shape of one quality map when maps are written, else None.
        decode_threads: threads decoding images.
    """

    label = "score"

    def __init__(
        self,
        source: SourceStage,
        decode: DecodeStage,
        score: ScoreStage,
        output: tuple[str, dict | None],
        metadata: dict,
        model_name: str,
        config_hash: str,
        map_shape: tuple[int, ...] | None,
        decode_threads: int,
    ) -> None:
        self.source, self.decode, self.score = source, decode, score
        self.where, self.metadata, self.model_name, self.config_hash = output, metadata, model_name, config_hash
        self.map_shape, self.decode_threads = map_shape, max(1, decode_threads)
        self.num_cpus, self.num_gpus = score.num_cpus, score.num_gpus

    def setup(self) -> None:
        failpoint("worker.setup")
        self.score.setup()
        self.output = OutputLocation(*self.where)
        self.scores_schema = schema.with_metadata(schema.SCORES_SCHEMA, self.metadata)
        self.maps_schema = (
            schema.with_metadata(
                schema.MAPS_SCHEMA, {**self.metadata, "map_shape": list(self.map_shape), "map_dtype": "float16"}
            )
            if self.map_shape
            else None
        )
        self._decoders = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="dpiqa-decode")
        # Every model call runs on this one thread, one at a time (the device, or the CPU's cores, is shared). Not
        # a lock taken by each unit's thread: torch's OpenMP pool belongs to the thread that calls it, so units
        # calling the model from their own threads each keep a team of OpenMP threads that spin after every call,
        # on the cores the next call needs.
        self._model = ThreadPoolExecutor(1, thread_name_prefix="dpiqa-model")
        self._lock = threading.Lock()
        self._rows: dict[int, int] = {}  # rows of each unit in flight
        self._last: dict[int, float] = {}  # when each unit in flight last processed a row (or started)
        self._ever = 0
        self._stopping = threading.Event()

    def __call__(self, unit: dict) -> dict:
        url, name = unit["url"], unit["name"]
        token = object()  # this call's entry in the progress counters
        me = id(token)
        with self._lock:
            self._rows[me] = 0
            self._last[me] = time.monotonic()
        writer = None
        try:
            failpoint("unit.start", url)
            writer = ShardWriter(
                self.output,
                url,
                name,
                self.scores_schema,
                self.maps_schema,
                self.model_name,
                self.config_hash,
                source=source_identity(url, self.source.storage_options),
            )
            chunks = self.source.read_shard(url)
            for decoded in ordered_map(self.decode, chunks, self._decoders, self.decode_threads + 1):
                if self._stopping.is_set():
                    raise RuntimeError(f"{url}: stopped before its end (the run was interrupted)")
                scored = self._model.submit(self.score, decoded).result()
                n = writer.add(scored)
                with self._lock:
                    self._rows[me] += n
                    self._ever += n
                    self._last[me] = time.monotonic()
            fact = writer.commit()
        except BaseException:
            if writer is not None:
                writer.discard()
            raise
        finally:
            with self._lock:
                del self._rows[me], self._last[me]
        return asdict(fact)

    def progress(self) -> tuple[int, int, float]:
        with self._lock:
            stalest = time.monotonic() - min(self._last.values()) if self._last else 0.0
            return sum(self._rows.values()), self._ever, stalest

    def stop(self) -> None:
        if hasattr(self, "_stopping"):  # made by setup (an Event does not travel to Ray's workers)
            self._stopping.set()

    def teardown(self) -> None:
        self._decoders.shutdown(wait=False, cancel_futures=True)
        self._model.shutdown(wait=False, cancel_futures=True)


class ScoreJob(ShardJob):
    """`score` as a shard job: `ShardScorer` workers (Ray actors, or one in this process), a shard per unit."""

    label = "score"
    unit = "images"

    def __init__(
        self,
        config: ScoreConfig,
        executor: Executor,
        stages: list[Stage],
        output: OutputLocation,
        info: models.ModelInfo,
        digest: str,
        startup: dict,
    ) -> None:
        self.config, self.executor, self.stages, self.output = config, executor, stages, output
        self.info, self.digest = info, digest
        self.startup = startup
        self.reader_retries = 0

    def worker(self) -> ShardScorer:
        source, decode, score = self.stages
        metadata = {**self.info.identity(), "config_hash": self.digest, "code_version": code_version()}
        # On a GPU the CPUs decode for the device; on a CPU the model's torch threads take the cores and one decoding
        # thread overlaps them (two measured no better on 2 cores: 0.42x vs 0.40x of a bare loop, engine-overhead).
        threads = self.config.decode_threads or (max(2, int(score.num_cpus)) if score.num_gpus else 1)
        return ShardScorer(
            source,
            decode,
            score,
            (self.output.url, self.config.storage_options),
            metadata,
            self.config.model,
            self.digest,
            self.info.map_shape if self.config.write_maps else None,
            threads,
        )

    def fact(self, unit: dict, result: dict):  # ShardFact
        f = super().fact(unit, result)
        self.reader_retries += f.retries
        return f

    def manifest(self, tally: Tally) -> dict:
        # What the workers reported (each process's retries, taken once per shard) plus this process's rest
        # (listing, markers read) since the workers last took.
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
    """GPUs the scoring workers can use, and the seconds it took to start or reach Ray (0 in this process).
    On Ray they are the cluster's (its resources, never the driver's own hardware); in this process, this
    machine's."""
    from dpiqa.engine.executor.ray_actors import RayExecutor

    if not isinstance(executor, RayExecutor):
        import torch

        return float(torch.cuda.device_count()), 0.0
    import ray

    seconds = executor.connect()
    return float(ray.cluster_resources().get("GPU", 0)), round(seconds, 3)
