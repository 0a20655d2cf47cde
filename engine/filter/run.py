"""`run_filter`: a filter run over many shards (pair each input shard with its scores, choose the cut, claim
the output, run `ShardFilter` one shard per unit through the shared shard loop, in this process or on Ray)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from dpiqa import storage
from dpiqa.engine.executor.base import UnitWorker
from dpiqa.engine.filter.cutoff import Cutoff, min_score_cutoff, top_fraction_cutoff
from dpiqa.engine.filter.shard_copy import KEYS_DIR, ShardFilter, ShardResult, ShardTask
from dpiqa.engine.identity import identity_fields, setting
from dpiqa.engine.output import DONE_DIR, OutputLocation, RunResult
from dpiqa.engine.runner import ShardJob, Tally, pending_shards, run_shard_job
from dpiqa.engine.scores import ScoredRun, ScoredShard
from dpiqa.engine.shards.listing import ShardList, list_shards, refuse_overlap
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
        workers: shards filtered at once in this process (threads: the work is copying bytes between
            streams, which waits on I/O), or on Ray the workers (each with two shards in flight).
        storage_options: fsspec options for every location.
    """

    scores: str
    input: str = setting()  # which shards of the scored run are copied, not what is kept of them
    output: str = setting()
    min_score: float | None = None
    top_fraction: float | None = None
    keys_only: bool = False
    overwrite: bool = setting(False)
    workers: int = setting(4)
    storage_options: dict | None = setting(None)

    def __post_init__(self) -> None:
        if (self.min_score is None) == (self.top_fraction is None):
            raise UsageError("give exactly one of --min-score and --top-fraction")
        if self.top_fraction is not None and not 0 < self.top_fraction <= 1:
            raise UsageError(f"--top-fraction must be in (0, 1], not {self.top_fraction}")
        if self.min_score is not None and not math.isfinite(self.min_score):
            raise UsageError(f"--min-score must be a finite number, not {self.min_score}")


FilterResult = RunResult


def match_shards(run: ScoredRun, shards: ShardList) -> tuple[list[tuple[str, ScoredShard]], dict[str, str]]:
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
        executor: `local` (this process, `config.workers` shards at once), `ray` (`config.workers` Ray actors,
            a shard per unit) or `auto` (`dpiqa.engine.executor.choose_executor`).
        address: Ray cluster address for the `ray` executor.

    Raises:
        engine.output.ForeignOutputError: the output holds another filter's results.
        ValueError: bad input (no shard, no scores, output on top of the input).
    """
    t0 = time.monotonic()
    shards = list_shards(config.input, config.storage_options)
    out = OutputLocation(config.output, config.storage_options)
    refuse_overlap(shards, out.url, config.storage_options)
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
        **identity_fields(config),
        "scores_config": (run.run_info or {}).get("config_hash"),
        "cutoff": cutoff.identity() if config.top_fraction is not None else None,
    }
    if config.overwrite:
        _remove_previous(out)
    digest = out.claim(identity, overwrite=config.overwrite)

    todo, skipped = pending_shards(out, shards)
    from dpiqa.engine.executor import choose_executor

    runner = choose_executor(executor, address, shards, config.storage_options, "filter")
    log.info(
        "filter: %d shards, %d already done, %d to do, %d without scores",
        len(shards.urls),
        skipped,
        len(todo),
        len(missing),
    )
    worker = ShardFilter(config.scores, config.output, cutoff, config.keys_only, digest, config.storage_options)
    # A shard paired by name (moved or copied since it was scored) keeps its size and ETag but not its
    # modification time: only what a copy keeps is compared.
    tasks = {
        url: ShardTask(
            url,
            s.name,
            s.path,
            s.source if s.url == url else {k: v for k, v in s.source.items() if k != "mtime"},
            scored=asdict(s),
        )
        for url, s in pairs
    }
    job = FilterJob(worker, tasks, missing, out, cutoff, config.scores)
    settings = {k: v for k, v in asdict(config).items() if k != "storage_options"}
    slots, depth = (1, config.workers) if runner.in_process else (config.workers, 2)
    return run_shard_job(
        job, runner, shards, out, todo, skipped, settings, digest, slots=slots, depth=depth, retries=2, started=t0
    )


class FilterJob(ShardJob):
    """`filter` as a shard job: one `ShardFilter` call per shard (a shard without scores fails at once)."""

    label = "filter"
    unit = "kept samples"

    def __init__(
        self,
        filter_: ShardFilter,
        tasks: dict[str, ShardTask],
        missing: dict[str, str],
        out: OutputLocation,
        cutoff: Cutoff,
        scores: str,
    ) -> None:
        self.filter, self.tasks, self.missing = filter_, tasks, missing
        self.out, self.cutoff, self.scores = out, cutoff, scores
        self.kept = self.refused = 0

    def worker(self) -> UnitWorker:
        return FilterWorker(self.filter)

    def units(self, todo: list[str], names: dict[str, str]) -> Iterable[dict]:
        for url in todo:
            task = self.tasks.get(url)
            yield {
                "url": url,
                "name": names[url],
                "task": asdict(task) if task else None,
                "missing": self.missing.get(url),
            }

    def fact(self, unit: dict, result: dict) -> ShardFact:
        r = ShardResult(**result)
        if r.error is None:
            self.kept += r.kept
            self.refused += r.refused
        return ShardFact(r.url, r.name, r.rows_scored, {"kept": r.kept, "refused": r.refused}, error=r.error)

    def progress_units(self, fact: ShardFact) -> int:
        return fact.statuses.get("kept", 0)

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


class FilterWorker(UnitWorker):
    """The unit worker of `filter`: one shard per call (`ShardFilter`); a shard without scores fails at once."""

    label = "filter"
    num_cpus = 0.5  # copying bytes between streams waits on I/O

    def __init__(self, filter_: ShardFilter) -> None:
        self.filter = filter_

    def __call__(self, unit: dict) -> dict:
        if unit["task"] is None:
            return asdict(ShardResult(unit["name"], unit["url"], error=unit["missing"]))
        return asdict(self.filter(ShardTask(**unit["task"])))
