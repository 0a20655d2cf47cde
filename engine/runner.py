"""The shard-job runner that `score` and `filter` share: claim the output, skip the shards already done, run
the job over the rest, run again over what a lost node or worker left unfinished, show progress, and write
the manifest. A job only says how to process shards and reports one `ShardFact` per shard."""

from __future__ import annotations

import logging
import secrets
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from dpiqa import storage
from dpiqa.engine.output import MANIFEST, RUNS_DIR, OutputLocation, RunResult
from dpiqa.engine.progress import Progress
from dpiqa.engine.stages.write import ShardFact
from dpiqa.version import code_version

log = logging.getLogger(__name__)


@dataclass
class Tally:
    """What the runner has heard so far in one run (for progress lines and the manifest)."""

    facts: dict[str, ShardFact] = field(default_factory=dict)
    images: int = 0  # the job's unit of progress (images scored, samples kept)
    first_output: float | None = None  # seconds from the start until the first unit came back


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
        report()

    def units(n: int) -> None:
        if tally.first_output is None:
            tally.first_output = time.monotonic() - t0
        tally.images += n
        report()

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
