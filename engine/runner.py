"""The shard loop that every shard job shares (`score`, `filter`, the audit's scan): units to workers, one
unit retried alone, lost and hung workers replaced, progress, and the run's manifest.

The driver's work is O(1) per unit and nothing per block or image: it submits one call per unit, receives
one small result per unit and updates counters (`Tally`) from it; progress between results comes from one
poll of each worker every few seconds. Resume is the markers': a unit whose marker exists is not in `todo`.
"""

from __future__ import annotations

import logging
import secrets
import time
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from dpiqa.engine.executor.base import Executor, UnitWorker, WorkerLost, WorkerPool
from dpiqa.engine.output import MANIFEST, RUNS_DIR, OutputLocation, RunResult
from dpiqa.engine.progress import Progress, duration
from dpiqa.engine.shards.listing import ShardList
from dpiqa.engine.stages.write import ShardFact
from dpiqa.version import code_version

log = logging.getLogger(__name__)

# Seconds without a finished unit or any progress after which a run says it is waiting, and again every as many
# seconds while it waits: a model still loading or a cluster without room for a worker is otherwise silent.
STALL_WARNING_SECONDS = 300.0
# Seconds a worker with units in flight may go without processing a row before it counts as hung: it is
# stopped and replaced (on Ray) and its units run again. A shard's first rows come after its first read.
HANG_SECONDS = 900.0
POLL_SECONDS = 2.0  # how often the loop looks at the workers' progress
# The markers a run wrote are recorded in bulk (`OutputLocation.record_markers`) every so many shards or
# seconds, so that a later run learns them from a few files; a killed run leaves at most that many unrecorded.
RECORD_EVERY_SHARDS = 10_000
RECORD_EVERY_SECONDS = 300.0


@dataclass
class Tally:
    """What the runner has heard so far in one run: counters, updated once per unit (never re-summed)."""

    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # url -> error (failures are few)
    rows: int = 0
    statuses: Counter = field(default_factory=Counter)
    images: int = 0  # the job's unit of progress (images scored, samples kept) of finished units
    in_flight: int = 0  # the same, of units still in flight (from the last poll)
    first_output: float | None = None  # seconds from the start until the first row was processed
    last_activity: float = field(default_factory=time.monotonic)
    # Faults: units started more than once, units that were in flight on a worker that was lost or stopped
    # as hung, workers lost and hung, and every attempt that did not finish its unit.
    units_started_again: int = 0
    lost_in_flight: int = 0
    workers_lost: int = 0
    workers_hung: int = 0
    failed_attempts: int = 0
    interrupted: bool = False
    # What the driver received: one result per unit attempt, and one answer per worker per progress poll.
    results_received: int = 0
    progress_polls: int = 0

    def add(self, f: ShardFact) -> None:
        if f.error is not None:
            self.failed[f.url] = f.error
            return
        self.done += 1
        self.rows += f.rows
        self.statuses.update(f.statuses)


class ShardJob(ABC):
    """One job over shards: its worker (what one unit does) and how a unit's result reads.

    Attributes:
        label: the job's name in log lines (`score`, `filter`).
        unit: what progress counts (`images`, `kept samples`).
    """

    label: str = "job"
    unit: str = "images"

    @abstractmethod
    def worker(self) -> UnitWorker:
        """The worker that does one shard per call (read, process, write, marker last)."""

    def units(self, todo: list[str], names: dict[str, str]) -> Iterable[dict]:
        """The units of `todo`, one per shard."""
        return ({"url": u, "name": names[u]} for u in todo)

    def fact(self, unit: dict, result: dict) -> ShardFact:
        """A finished unit's result as the manifest counts it."""
        return ShardFact(**result)

    def progress_units(self, fact: ShardFact) -> int:
        """How much of `unit` a finished unit did (images scored)."""
        return fact.rows

    def manifest(self, tally: Tally) -> dict:
        """The job's own manifest fields."""
        return {}


def pending_shards(output: OutputLocation, shards: ShardList) -> tuple[list[str], int]:
    """The shards without a completion marker, and how many have one: from one listing of the markers and the
    runs' records of the URLs they name (`OutputLocation.done_urls`), not from reading every marker. A shard
    counts as done when a marker names its URL under any output name (an earlier run may have named it
    differently), so no run writes one input shard twice into one output.

    Raises:
        ValueError: the output name of a shard holds another shard's results.
    """
    done = output.done_urls(record_reads=True)
    by_url = {url: name for name, url in done.items()}
    todo, skipped = [], 0
    for url in shards.urls:
        if url in by_url:
            skipped += 1
            continue
        other = done.get(shards.names[url])
        if other is not None:
            raise ValueError(
                f"{output.url}: output name {shards.names[url]!r} holds the results of "
                f"{other}, not of {url}; use a separate --output for this shard set"
            )
        todo.append(url)
    return todo, skipped


def run_units(
    pool: WorkerPool,
    units: Iterable[dict],
    on_result: Callable[[dict, dict], None],
    on_failure: Callable[[dict, str], None],
    tally: Tally,
    label: str,
    max_attempts: int = 4,
    hang_seconds: float = HANG_SECONDS,
    stall_warning: float = STALL_WARNING_SECONDS,
    poll: float = POLL_SECONDS,
    on_progress: Callable[[], None] = lambda: None,
) -> None:
    """Run every unit on `pool`, each at most `max_attempts` times; `on_result(unit, result)` for each finished
    one, `on_failure(unit, why)` for each that failed every attempt.

    A unit whose worker died (`WorkerLost`) or raised is started again (on any worker, after the units not yet
    started); a worker with a unit that processed no row for `hang_seconds` (or that answers no progress poll
    for as long) is stopped and replaced (where the pool can) and its units run again. Only units are ever
    retried, never the run.
    """
    queue = deque()
    source = iter(units)
    in_flight: dict = {}  # ticket -> (unit, slot, worker generation)
    load = [0] * pool.slots
    attempts: dict[str, int] = {}  # unit url -> attempts that did not finish it (only units that had one)
    seen = [-1] * pool.slots  # each worker's rows processed, at the last poll
    answered = [time.monotonic()] * pool.slots  # when each worker last answered a poll (or got its first unit)
    next_poll = time.monotonic() + poll
    warned_at = float("-inf")

    def next_unit() -> dict | None:
        if queue:
            return queue.popleft()
        return next(source, None)

    def again(unit: dict, why: str) -> None:
        tally.failed_attempts += 1
        n = attempts[unit["url"]] = attempts.get(unit["url"], 0) + 1
        if n >= max_attempts:
            attempts.pop(unit["url"], None)
            log.error("%s: %s failed %d times; giving up on it (%s)", label, unit["url"], n, why)
            on_failure(unit, f"failed {n} attempts; the last: {why}")
            return
        log.warning("%s: %s: attempt %d did not finish (%s); it runs again", label, unit["url"], n, why)
        if n == 1:
            tally.units_started_again += 1
        queue.append(unit)
        nonlocal exhausted
        exhausted = False

    def lose(slot: int, why: str, hung: bool) -> None:
        """The worker in `slot` is gone (or stopped as hung): replace it, and run its units again."""
        if hung:
            tally.workers_hung += 1
        else:
            tally.workers_lost += 1
        mine = [t for t, (_, s, g) in in_flight.items() if s == slot and g == pool.generation(slot)]
        tally.lost_in_flight += len(mine)
        log.warning("%s: worker %d %s with %d units in flight; replacing it", label, slot, why, len(mine))
        if pool.restartable:
            pool.restart(slot)
        for t in mine:
            unit, _, _ = in_flight.pop(t)
            load[slot] -= 1
            again(unit, f"its worker {why}")
        seen[slot], answered[slot] = -1, time.monotonic()

    exhausted = False
    while True:
        for slot in range(pool.slots):
            if exhausted or load[slot] >= pool.depth or not pool.ready(slot):
                continue
            while load[slot] < pool.depth:
                unit = next_unit()
                if unit is None:
                    exhausted = not queue
                    break
                if not load[slot]:
                    answered[slot] = time.monotonic()
                in_flight[pool.submit(slot, unit)] = (unit, slot, pool.generation(slot))
                load[slot] += 1
        if not in_flight:
            if exhausted and not queue:
                break
            time.sleep(0.05)  # no worker ready yet (a model loading, a node joining)
        finished = pool.wait(list(in_flight), timeout=poll) if in_flight else []
        for ticket in finished:
            if ticket not in in_flight:
                continue  # its worker was replaced meanwhile; the unit already runs again
            unit, slot, gen = in_flight.pop(ticket)
            load[slot] -= 1
            tally.results_received += 1
            try:
                result = pool.result(ticket)
            except WorkerLost as exc:
                if gen == pool.generation(slot):
                    in_flight[ticket] = (unit, slot, gen)  # counted with the slot's others
                    load[slot] += 1
                    lose(slot, f"was lost ({exc})", hung=False)
                else:
                    again(unit, f"its worker was lost ({exc})")
                continue
            except Exception as exc:  # the unit's own failure: it alone runs again
                again(unit, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
                continue
            attempts.pop(unit["url"], None)
            tally.last_activity = time.monotonic()
            on_result(unit, result)
        now = time.monotonic()
        if now < next_poll:
            continue
        next_poll = now + poll
        progress = pool.progress()
        tally.progress_polls += sum(p is not None for p in progress)
        tally.in_flight = sum(p[0] for p in progress if p)
        for slot, p in enumerate(progress):
            if p is None:  # starting, or stuck without answering (its spare thread gets no turn)
                if load[slot] and pool.restartable and now - answered[slot] >= hang_seconds:
                    lose(slot, f"did not answer for {duration(now - answered[slot])}", hung=True)
                continue
            answered[slot] = now
            ever, idle = p[1], (p[2] if len(p) > 2 else 0.0)
            if ever != seen[slot]:
                seen[slot] = ever
                if ever > 0:
                    tally.last_activity = now
                    if tally.first_output is None:
                        tally.first_output = now
            if load[slot] and pool.restartable and idle >= hang_seconds:
                lose(slot, f"had a unit that processed nothing for {duration(idle)}", hung=True)
        on_progress()
        idle = now - tally.last_activity
        if idle >= stall_warning and now - warned_at >= stall_warning:
            warned_at = now
            log.warning(
                "%s: nothing finished in the last %s (%d units done, %d in flight); still waiting. A model still "
                "loading, a stuck worker or a cluster without room for a worker (free CPUs, GPUs) stalls a run: "
                "see the Ray logs, or stop it and run it again (finished shards are kept)",
                label,
                duration(idle),
                tally.done + len(tally.failed),
                len(in_flight),
            )


def run_shard_job(
    job: ShardJob,
    executor: Executor,
    shards: ShardList,
    output: OutputLocation,
    todo: list[str],
    skipped: int,
    config: dict,
    config_hash: str,
    slots: int | None = None,
    depth: int = 2,
    retries: int = 3,
    started: float | None = None,
    stall_warning: float = STALL_WARNING_SECONDS,
    hang_seconds: float = HANG_SECONDS,
    poll: float = POLL_SECONDS,
) -> RunResult:
    """Run `job` over the shards in `todo` (the output already claimed) and write the manifest.

    Args:
        job: what to do with each shard.
        executor: where the units run.
        shards: the input's shards (all of them: the manifest counts them).
        output: the claimed output location.
        todo: the shards without a marker.
        skipped: how many had one.
        config: the job's configuration, for the manifest.
        config_hash: the output's identity.
        slots: workers (default: the executor's choice for the job's worker).
        depth: units in flight per worker.
        retries: attempts after the first for a unit that did not finish (its worker lost, or it raised).
        started: `time.monotonic()` when the command started (start-up is measured from it).
        stall_warning: seconds without progress before a warning line (repeated while nothing moves).
        hang_seconds: seconds a worker may process nothing with units in flight before it is replaced.
        poll: seconds between looks at the workers' progress.
    """
    t0 = started if started is not None else time.monotonic()
    wall = datetime.now(timezone.utc)
    run_id = f"{wall.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"
    resumes = output.unfinished_runs() if skipped else []
    tally = Tally()
    progress = Progress(job.label, len(todo), unit=job.unit)
    unrecorded: list[tuple[str, dict]] = []
    record = {"part": 0, "at": time.monotonic()}

    def flush_markers(force: bool = False) -> None:
        now = time.monotonic()
        if unrecorded and (
            force or len(unrecorded) >= RECORD_EVERY_SHARDS or now - record["at"] >= RECORD_EVERY_SECONDS
        ):
            output.record_markers(run_id, record["part"], unrecorded)
            unrecorded.clear()
            record["part"] += 1
            record["at"] = now

    def report(force: bool = False) -> None:
        per_shard = tally.images / tally.done if tally.done else None
        progress.update(
            tally.done,
            tally.images + tally.in_flight,
            failed=len(tally.failed),
            expected_count=int(per_shard * len(todo)) if per_shard else None,
            force=force,
        )

    def on_result(unit: dict, result: dict) -> None:
        f = job.fact(unit, result)
        tally.add(f)
        if f.error is None:
            tally.images += job.progress_units(f)
            if f.marker is not None:
                unrecorded.append((f.name, f.marker))
                flush_markers()
        if tally.first_output is None:
            tally.first_output = time.monotonic()
        report()

    def on_failure(unit: dict, why: str) -> None:
        tally.add(ShardFact(unit["url"], unit.get("name", ""), error=why))
        report()

    pool = None
    try:
        if todo:
            worker = job.worker()
            pool = executor.pool(worker, slots or executor.default_slots(worker), depth)
            run_units(
                pool,
                job.units(todo, shards.names),
                on_result,
                on_failure,
                tally,
                job.label,
                max_attempts=retries + 1,
                hang_seconds=hang_seconds,
                stall_warning=stall_warning,
                poll=poll,
                on_progress=report,
            )
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: what finished is on storage with its markers; the run's record says so, so that a
        # nightly audit of this run (or the rerun's) sees these shards.
        tally.interrupted = True
        raise
    finally:
        if pool is not None:
            pool.close()
        if tally.first_output is not None and tally.first_output > t0:
            tally.first_output -= t0
        flush_markers(force=True)
        result = _finish(job, shards, output, skipped, config, config_hash, tally, progress, t0, wall, run_id, resumes)
    return result


def _finish(
    job: ShardJob,
    shards: ShardList,
    output: OutputLocation,
    skipped: int,
    config: dict,
    config_hash: str,
    tally: Tally,
    progress: Progress,
    t0: float,
    wall: datetime,
    run_id: str,
    resumes: list[str],
) -> RunResult:
    """The final progress line, the manifest (one record per run, and the latest) and the failed shards."""
    progress.update(tally.done, tally.images, failed=len(tally.failed), force=True)
    elapsed = time.monotonic() - t0
    manifest = {
        "input": config.get("input"),
        "output": config.get("output"),
        "config": config,
        "config_hash": config_hash,
        "code_version": code_version(),
        "shards": {
            "total": len(shards.urls),
            "skipped_done": skipped,
            "written": tally.done,
            "failed": len(tally.failed),
        },
        "failed_shards": dict(tally.failed),
        "rows": tally.rows,
        "statuses": dict(tally.statuses),
        # Units that ran more than once, and why: the units in flight on workers that were lost or stopped as
        # hung (each is run again alone), and attempts that raised. A clean run has zeros.
        "retries": {
            "units_started_again": tally.units_started_again,
            "units_in_flight_on_lost_workers": tally.lost_in_flight,
            "workers_lost": tally.workers_lost,
            "workers_hung": tally.workers_hung,
            "failed_attempts": tally.failed_attempts,
        },
        "interrupted": tally.interrupted,
        "driver": {"results": tally.results_received, "progress_polls": tally.progress_polls},
        "started": wall.isoformat(timespec="seconds"),
        "seconds": round(elapsed, 3),
        # until the first unit of work came back: listing, (Ray start,) model load, first batch
        "startup_seconds": round(tally.first_output, 3) if tally.first_output is not None else None,
        "per_second": round(tally.images / elapsed, 2) if elapsed > 0 else None,
        **job.manifest(tally),
    }
    manifest["run_id"] = run_id
    if resumes:  # the unfinished runs before this one, whose shards this run's increment includes
        manifest["resumes"] = resumes
    # One record per run (what a nightly audit selects with `--run`), then the latest as manifest.json.
    output.write_json(f"{RUNS_DIR}/{run_id}.json", manifest)
    output.write_json(MANIFEST, manifest)
    if tally.failed:
        log.error(
            "%s: %d shard(s) failed:\n  %s",
            job.label,
            len(tally.failed),
            "\n  ".join(f"{u}: {e}" for u, e in sorted(tally.failed.items())),
        )
    return RunResult(manifest)
