"""`run_filter`: a filter run over many shards (pair each input shard with its scores, choose the cut, claim
the output, run `ShardFilter` per shard on a thread pool or as Ray Data tasks through the shared shard-job
runner)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass

from dpiqa import storage
from dpiqa.engine.filter.cutoff import Cutoff, min_score_cutoff, top_fraction_cutoff
from dpiqa.engine.filter.shard_copy import KEYS_DIR, ShardFilter, ShardResult, ShardTask
from dpiqa.engine.output import DONE_DIR, OutputLocation, RunResult
from dpiqa.engine.runner import ShardJob, Tally, pending_shards, run_shard_job
from dpiqa.engine.scores import ScoredRun, ScoredShard
from dpiqa.engine.stages.write import ShardFact
from dpiqa.errors import UsageError

log = logging.getLogger(__name__)


@dataclass
class FilterConfig:
    """What a filter run reads, keeps and writes.

    Args:
        scores: output location of the `dpiqa score` run.
        input: the shards (brace pattern, glob, prefix/folder, or a text file of URLs), as for `score`.
        output: where the new shards go (local folder or fsspec URL).
        min_score: keep rows with status `ok` and `score >= min_score`.
        top_fraction: keep the highest scored `ceil(top_fraction * N)` of the N ok rows of the input
            shards; ties at the cut are kept in (shard name, index) order.
        keys_only: write only the kept keys (`keys/NAME.parquet`), no shards.
        overwrite: replace another filter's results at `output`.
        workers: shards filtered at once by the local executor.
        storage_options: fsspec options for every location.
    """

    scores: str
    input: str
    output: str
    min_score: float | None = None
    top_fraction: float | None = None
    keys_only: bool = False
    overwrite: bool = False
    workers: int = 4
    storage_options: dict | None = None

    def __post_init__(self) -> None:
        if (self.min_score is None) == (self.top_fraction is None):
            raise UsageError("give exactly one of --min-score and --top-fraction")
        if self.top_fraction is not None and not 0 < self.top_fraction <= 1:
            raise UsageError(f"--top-fraction must be in (0, 1], not {self.top_fraction}")
        if self.min_score is not None and not math.isfinite(self.min_score):
            raise UsageError(f"--min-score must be a finite number, not {self.min_score}")


FilterResult = RunResult


def match_shards(run: ScoredRun, shards: storage.ShardList) -> tuple[list[tuple[str, ScoredShard]], dict[str, str]]:
    """Pair input shard URLs with their completed scores: by the URL the score marker names, else (for
    shards that were moved or copied) by the deterministic output name. Returns the pairs and, for the
    unmatched URLs, why."""
    by_url = {s.url: s for s in run.shards}
    by_name = {s.name: s for s in run.shards}
    names = shards.names
    pairs, missing = [], {}
    for url in shards.urls:
        shard = by_url.get(url) or by_name.get(names[url])
        if shard is None:
            missing[url] = f"no completed scores for this shard in {run.url} (see its {DONE_DIR}/*.json)"
        else:
            pairs.append((url, shard))
    return pairs, missing


def run_filter(config: FilterConfig, executor: str = "auto", address: str | None = None) -> FilterResult:
    """Filter every input shard that has no completion marker at `config.output`.

    Args:
        config: the run.
        executor: `local` (a thread pool of `config.workers`), `ray` (one Ray Data task per shard) or `auto`
            (`dpiqa.engine.executor.choose_executor`).
        address: Ray cluster address for the `ray` executor.

    Raises:
        engine.output.ForeignOutputError: the output holds another filter's results.
        ValueError: bad input (no shard, no scores, output on top of the input).
    """
    t0 = time.monotonic()
    shards = storage.list_shards(config.input, config.storage_options)
    out = OutputLocation(config.output, config.storage_options)
    storage.refuse_overlap(shards, out.url, config.storage_options)
    out.check_writable()
    run = ScoredRun(config.scores, config.storage_options)
    pairs, missing = match_shards(run, shards)
    for url, shard in pairs:
        if storage.canonical(out.child(f"{shard.name}.tar"), config.storage_options) == url:
            raise ValueError(f"--output {config.output} would overwrite input shard {url}; choose another folder")

    if config.top_fraction is not None:
        cutoff = top_fraction_cutoff(run, [s for _, s in pairs], config.top_fraction)
        log.info(
            "filter: top %.4g of %s ok rows = %s rows, cut at score %s",
            config.top_fraction,
            f"{cutoff.total:,}",
            f"{cutoff.kept:,}",
            cutoff.score,
        )
    else:
        cutoff = min_score_cutoff(config.min_score)
    identity = {
        "scores": config.scores,
        "scores_config": (run.run_info or {}).get("config_hash"),
        "min_score": config.min_score,
        "top_fraction": config.top_fraction,
        "cutoff": cutoff.identity() if config.top_fraction is not None else None,
        "keys_only": config.keys_only,
    }
    if config.overwrite:
        _remove_previous(out)
    digest = out.claim(identity, overwrite=config.overwrite)

    todo, skipped = pending_shards(out, shards)
    if executor == "auto":
        from dpiqa.engine.executor import choose_executor

        executor = (
            "local" if choose_executor("auto", address, shards, config.storage_options, "filter").in_process else "ray"
        )
    log.info(
        "filter: %d shards, %d already done, %d to do, %d without scores",
        len(shards.urls),
        skipped,
        len(todo),
        len(missing),
    )
    worker = ShardFilter(config.scores, config.output, cutoff, config.keys_only, digest, config.storage_options)
    tasks = {url: ShardTask(url, s.name, s.path) for url, s in pairs}
    job = FilterJob(worker, tasks, missing, executor, config.workers, address, out, cutoff, config.scores)
    settings = {k: v for k, v in asdict(config).items() if k != "storage_options"}
    return run_shard_job(job, shards, out, todo, skipped, settings, digest, retries=2, started=t0)


class FilterJob(ShardJob):
    """`filter` as a shard job: one `ShardFilter` call per shard, on a thread pool or as Ray Data tasks."""

    label = "filter"
    unit = "kept samples"

    def __init__(
        self,
        worker: ShardFilter,
        tasks: dict[str, ShardTask],
        missing: dict[str, str],
        executor: str,
        workers: int,
        address: str | None,
        out: OutputLocation,
        cutoff: Cutoff,
        scores: str,
    ) -> None:
        self.worker, self.tasks, self.missing, self.executor = worker, tasks, missing, executor
        self.workers, self.address, self.out, self.cutoff, self.scores = workers, address, out, cutoff, scores
        self.kept = self.refused = 0

    def process(self, shards: list[str], fact: Callable[[ShardFact], None], units: Callable[[int], None]) -> None:
        for url in shards:
            if url in self.missing:
                fact(ShardFact(url, "", error=self.missing[url]))
        todo = [self.tasks[u] for u in shards if u in self.tasks]
        run = (
            _run_local(self.worker, todo, self.workers)
            if self.executor == "local"
            else _run_ray(self.worker, todo, self.address)
        )
        for r in run:
            if r.error is None:
                self.kept += r.kept
                self.refused += r.refused
            fact(ShardFact(r.url, r.name, r.rows_scored, {"kept": r.kept, "refused": r.refused}, error=r.error))
            units(r.kept)

    def retryable(self, exc: BaseException) -> bool:
        from dpiqa.engine.executor.ray_data import is_ray_system_error

        return self.executor != "local" and is_ray_system_error(exc)

    def manifest(self, tally: Tally) -> dict:
        totals = {"kept": 0, "refused": 0}
        for marker in self.out.done().values():
            totals["kept"] += int(marker.get("kept", 0))
            totals["refused"] += int(marker.get("refused", 0))
        cutoff = self.cutoff
        return {
            "scores": self.scores,
            "cutoff": {
                "score": cutoff.score,
                "kept": cutoff.kept,
                "ok_rows": cutoff.total,
                "kept_at_cut": sum(cutoff.ties.values()) if cutoff.ties is not None else None,
            },
            "kept_this_run": self.kept,
            "refused_this_run": self.refused,
            **totals,
        }


def _remove_previous(out: OutputLocation) -> None:
    """Before `--overwrite`: remove the shards and key files the previous filter run wrote."""
    for name in out.done():
        for rel in (f"{name}.tar", f"{KEYS_DIR}/{name}.parquet"):
            out.remove(rel)


def _run_local(
    worker: Callable[[ShardTask], ShardResult], tasks: list[ShardTask], workers: int
) -> Iterable[ShardResult]:
    """Shards on a thread pool: the work is copying bytes between object-store streams (no decoding), so
    threads overlap the I/O latency and the GIL is released while they wait; processes would add nothing
    but pickling of the member bytes."""
    if not tasks:
        return
    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = [pool.submit(worker, t) for t in tasks]
        for future in as_completed(futures):
            yield future.result()


def _run_ray(worker: ShardFilter, tasks: list[ShardTask], address: str | None) -> Iterable[ShardResult]:
    """Shards as Ray Data tasks, one per shard (`from_items` + `map`): workers read and write the shards
    themselves; only each shard's small result comes back to the driver."""
    if not tasks:
        return
    import ray

    from dpiqa.engine.executor.ray_data import configure_data_context, init_ray

    init_ray(address)
    configure_data_context()

    def one(row: dict) -> dict:
        r = worker(ShardTask(**row))
        return {"result": json.dumps(asdict(r))}

    ds = ray.data.from_items([asdict(t) for t in tasks], override_num_blocks=len(tasks))
    for row in ds.map(one, num_cpus=0.5).iter_rows():
        yield ShardResult(**json.loads(row["result"]))
