"""The shard-job runner that `score` and `filter` share: claim the output, skip the shards already done, run
the job over the rest, run again over what a lost node or worker left unfinished, show progress, and write
the manifest. A job only says how to process shards and reports one `ShardFact` per shard."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from dpiqa import storage
from dpiqa.engine.output import MANIFEST, RUNS_DIR, OutputLocation, RunResult
from dpiqa.engine.progress import Progress, duration
from dpiqa.engine.stages.write import ShardFact
from dpiqa.version import code_version

log = logging.getLogger(__name__)

# Seconds without a finished image or shard after which a run says it is waiting, and again every as many
# seconds while it waits: a stuck worker or a cluster without room for a stage is otherwise silent.
STALL_WARNING_SECONDS = 300.0


@dataclass
class Tally:
    """What the runner has heard so far in one run (for progress lines and the manifest)."""

    facts: dict[str, ShardFact] = field(default_factory=dict)
    images: int = 0  # the job's unit of progress (images scored, samples kept)
    first_output: float | None = None  # seconds from the start until the first unit came back
    last_activity: float = field(default_factory=time.monotonic)  # when a unit or a fact last came


class ShardJob(ABC):
    """One job over shards.

    Attributes:
        label: the job's name in log lines (`score`, `filter`).
        unit: what `Tally.images` counts (`images`, `kept samples`).
    """

    label: str = "job"
    unit: str = "images"

    @abstractmethod
    def process(self, shards: list[str], fact: Callable[[ShardFact], None], units: Callable[[int], None]) -> None:
        """Process `shards`; call `fact` once per shard finished (written or failed) and `units` with each
        amount of work done. Raises when the attempt as a whole failed (see `retryable`)."""

    def retryable(self, exc: BaseException) -> bool:
        """Whether a failed attempt is worth running again over its unfinished shards (a lost node)."""
        return False

    def manifest(self, tally: Tally) -> dict:
        """The job's own manifest fields."""
        return {}


def pending_shards(output: OutputLocation, shards: storage.ShardList) -> tuple[list[str], int]:
    """The shards without a completion marker, and how many have one. A shard counts as done when a marker
    names its URL under any output name (an earlier run may have named it differently), so no run writes
    one input shard twice into one output.

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
            raise ValueError(
                f"{output.url}: output name {shards.names[url]!r} holds the results of "
                f"{marker.get('shard')}, not of {url}; use a separate --output for this shard set"
            )
        todo.append(url)
    return todo, skipped


def run_shard_job(
    job: ShardJob,
    shards: storage.ShardList,
    output: OutputLocation,
    todo: list[str],
    skipped: int,
    config: dict,
    config_hash: str,
    retries: int = 3,
    started: float | None = None,
    stall_warning: float = STALL_WARNING_SECONDS,
) -> RunResult:
    """Run `job` over the shards in `todo` (the output already claimed) and write the manifest.

    Args:
        job: what to do with each shard.
        shards: the input's shards (all of them: the manifest counts them).
        output: the claimed output location.
        todo: the shards without a marker.
        skipped: how many had one.
        config: the job's configuration, for the manifest.
        config_hash: the output's identity.
        retries: attempts after the first over the shards a failed attempt left unfinished.
        started: `time.monotonic()` when the command started (start-up is measured from it).
        stall_warning: seconds without a finished unit or shard before a warning line (repeated as long as
            nothing finishes).
    """
    t0 = started if started is not None else time.monotonic()
    wall = datetime.now(timezone.utc)
    tally = Tally()
    progress = Progress(job.label, len(todo), unit=job.unit)

    def report() -> None:
        done = sum(f.error is None for f in tally.facts.values())
        failed = len(tally.facts) - done
        per_shard = tally.images / done if done else None
        progress.update(
            done, tally.images, failed=failed, expected_count=int(per_shard * len(todo)) if per_shard else None
        )

    def fact(f: ShardFact) -> None:
        tally.facts[f.url] = f
        tally.last_activity = time.monotonic()
        report()

    def units(n: int) -> None:
        if tally.first_output is None:
            tally.first_output = time.monotonic() - t0
        tally.images += n
        tally.last_activity = time.monotonic()
        report()

    # The watcher gets the job's label and unit, not the job: a thread that held the last reference to the job
    # (its stages, its model) freed the model's tensors as it ended; when that happened after this function
    # returned, torch released the GIL mid-free while the interpreter shut down, and the process aborted
    # ("terminate called without an active exception", exit -6) after a run that had succeeded. It is also
    # joined, so no thread of the run outlives it.
    finished = threading.Event()
    watcher = threading.Thread(
        target=_warn_while_stalled,
        args=(job.label, job.unit, tally, len(todo), stall_warning, finished),
        name=f"{job.label}-stall-watcher",
        daemon=True,
    )
    watcher.start()
    try:
        attempt = _attempts(job, shards, output, todo, retries, tally, fact, units)
    finally:
        finished.set()
        watcher.join()
    return _finish(job, shards, output, skipped, config, config_hash, tally, progress, attempt, t0, wall)


def _attempts(
    job: ShardJob,
    shards: storage.ShardList,
    output: OutputLocation,
    todo: list[str],
    retries: int,
    tally: Tally,
    fact: Callable[[ShardFact], None],
    units: Callable[[int], None],
) -> int:
    """Run `job` over `todo`, then again over what a failed attempt left unfinished; returns the attempts."""
    remaining, attempt = list(todo), 0
    while remaining:
        attempt += 1
        error: BaseException | None = None
        try:
            job.process(remaining, fact, units)
        except Exception as exc:
            if not job.retryable(exc):
                raise
            error = exc
        _facts_from_markers(output, shards, remaining, tally)
        remaining = [u for u in remaining if u not in tally.facts]
        if not remaining:
            break
        if error is None or attempt > retries:
            why = f"{type(error).__name__}: {error}" if error else "its rows never all arrived"
            for url in remaining:
                tally.facts[url] = ShardFact(
                    url, shards.names[url], error=f"incomplete after {attempt} attempts: {why}"
                )
            break
        # A node or worker died and Ray gave up: a fresh attempt over the shards that are not written; their
        # partial rows are dropped (rows are keyed by shard and index, so nothing is counted twice).
        log.warning(
            "%s: attempt failed (%s: %s); attempt %d of %d on %d unfinished shards",
            job.label,
            type(error).__name__,
            str(error).splitlines()[0][:300],
            attempt + 1,
            retries + 1,
            len(remaining),
        )
    return attempt


def _warn_while_stalled(
    label: str, unit: str, tally: Tally, total: int, seconds: float, finished: threading.Event
) -> None:
    """Log a warning each time `seconds` pass with no unit or shard finished, until `finished` is set."""
    warned_at = float("-inf")
    while not finished.wait(min(seconds / 4, 15.0)):
        now = time.monotonic()
        idle = now - tally.last_activity
        if idle >= seconds and now - warned_at >= seconds:
            warned_at = now
            done = len(tally.facts)
            log.warning(
                "%s: nothing finished in the last %s (%d of %d shards done, %d %s); still waiting. A model "
                "still loading, a stuck worker or a cluster without room for a stage (free CPUs, GPUs) stalls "
                "a run: see the Ray logs, or stop it and run it again (finished shards are kept)",
                label,
                duration(idle),
                done,
                total,
                tally.images,
                unit,
            )


def _finish(
    job: ShardJob,
    shards: storage.ShardList,
    output: OutputLocation,
    skipped: int,
    config: dict,
    config_hash: str,
    tally: Tally,
    progress: Progress,
    attempt: int,
    t0: float,
    wall: datetime,
) -> RunResult:
    """The final progress line, the manifest (one record per run, and the latest) and the failed shards."""
    done = [f for f in tally.facts.values() if f.error is None]
    failed = {f.url: f.error for f in tally.facts.values() if f.error is not None}
    progress.update(len(done), tally.images, failed=len(failed), force=True)
    elapsed = time.monotonic() - t0
    counts: Counter = Counter()
    for f in done:
        counts.update(f.statuses)
    manifest = {
        "input": config.get("input"),
        "output": config.get("output"),
        "config": config,
        "config_hash": config_hash,
        "code_version": code_version(),
        "shards": {"total": len(shards.urls), "skipped_done": skipped, "written": len(done), "failed": len(failed)},
        "failed_shards": failed,
        "rows": sum(f.rows for f in done),
        "statuses": dict(counts),
        "attempts": attempt,
        "started": wall.isoformat(timespec="seconds"),
        "seconds": round(elapsed, 3),
        # until the first unit of work came back: listing, (Ray start,) model load, first batch
        "startup_seconds": round(tally.first_output, 3) if tally.first_output is not None else None,
        "per_second": round(tally.images / elapsed, 2) if elapsed > 0 else None,
        **job.manifest(tally),
    }
    run_id = f"{wall.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"
    manifest["run_id"] = run_id
    manifest["written"] = sorted(({"name": f.name, "url": f.url} for f in done), key=lambda w: w["name"])
    # One record per run (what a nightly audit selects with `--run`), then the latest as manifest.json.
    output.write_json(f"{RUNS_DIR}/{run_id}.json", manifest)
    output.write_json(MANIFEST, manifest)
    if failed:
        log.error(
            "%s: %d shard(s) failed:\n  %s",
            job.label,
            len(failed),
            "\n  ".join(f"{u}: {e}" for u, e in sorted(failed.items())),
        )
    return RunResult(manifest)


def _facts_from_markers(output: OutputLocation, shards: storage.ShardList, remaining: list[str], tally: Tally) -> None:
    """Shards of `remaining` that have a marker, though their fact never came (a writer that died after
    writing it): their facts are read from the markers."""
    missing = [u for u in remaining if u not in tally.facts]
    if not missing:
        return
    by_url = {m.get("shard"): (name, m) for name, m in output.done().items()}
    for url in missing:
        if url in by_url:
            name, m = by_url[url]
            tally.facts[url] = ShardFact(
                url, name, int(m.get("rows", 0)), dict(m.get("statuses", {})), int(m.get("io_retries", 0))
            )
