"""Every completed shard of a scored run read once into `RunStats`: in this process, or split among Ray workers."""

from __future__ import annotations

from dpiqa.engine.audit.stats import Grid, RunStats
from dpiqa.engine.executor.base import UnitWorker
from dpiqa.engine.progress import Progress
from dpiqa.engine.scores import ScoredRun, source_of

RAY_ROWS = 50_000_000  # `auto` scans on Ray above this many rows (about 100 s in one process)
ROWS_PER_TASK = 4_000_000  # rows one Ray task of a distributed scan reads


def scan(
    run: ScoredRun,
    grid: Grid,
    extremes: int,
    groups: bool,
    batch_size: int,
    label: str,
    executor: str = "local",
    address: str | None = None,
) -> RunStats:
    """Every completed shard of `run` read once into a `RunStats`: streamed in this process, or split
    among Ray tasks (`executor="ray"`) whose statistics merge into the same result."""
    if executor == "ray":
        return _scan_on_ray(run, grid, extremes, groups, batch_size, label, address)
    return _scan(run, grid, extremes, groups, batch_size, label)


def _scan(run: ScoredRun, grid: Grid, extremes: int, groups: bool, batch_size: int, label: str | None) -> RunStats:
    stats = RunStats(grid, extremes=extremes, groups=groups)
    columns = ["score", "status", "index"] + (["source"] if run.has_source and groups else [])
    progress = Progress(label, len(run.shards), unit="rows") if label else None
    seen: set[str] = set()
    for shard, batch in run.batches(columns, batch_size):
        seen.add(shard.name)
        stats.add(shard.name, shard.url, batch, source=None if run.has_source else source_of(shard.url))
        if progress is not None:
            progress.update(len(seen) - 1, stats.total.rows)
    if progress is not None:
        progress.update(len(seen), stats.total.rows, force=True)
    return stats


class ScanWorker(UnitWorker):
    """The audit's unit worker on a cluster: one part of the run (shards of about `ROWS_PER_TASK` rows) per call,
    its files read where the worker runs; returns the part's statistics (bounded by the grid, the extremes and
    one aggregate per shard), which the driver merges."""

    label = "audit"

    def __init__(
        self,
        url: str,
        storage_options: dict | None,
        schema,
        grid: Grid,
        extremes: int,
        groups: bool,
        batch_size: int,
    ) -> None:
        self.url, self.storage_options, self.schema = url, storage_options, schema
        self.grid, self.extremes, self.groups, self.batch_size = grid, extremes, groups, batch_size

    def __call__(self, unit: dict) -> dict:
        part = ScoredRun.part(self.url, self.storage_options, unit["shards"], self.schema)
        return {"stats": _scan(part, self.grid, self.extremes, self.groups, self.batch_size, None)}


def _scan_on_ray(
    run: ScoredRun, grid: Grid, extremes: int, groups: bool, batch_size: int, label: str, address: str | None
) -> RunStats:
    """The files split into units by their markers' row counts (about `ROWS_PER_TASK` each), scanned by Ray
    workers through the shard loop every job shares (`engine.runner.run_units`: a lost worker costs only its
    unit); the parts' statistics are merged here."""
    import ray

    from dpiqa.engine.executor.ray_actors import RayExecutor
    from dpiqa.engine.runner import Tally, run_units

    parts, current, rows = [], [], 0
    for shard in run.shards:
        current.append(shard)
        rows += shard.rows
        if rows >= ROWS_PER_TASK:
            parts.append(current)
            current, rows = [], 0
    if current:
        parts.append(current)
    executor = RayExecutor(address)
    executor.connect()
    slots = max(1, min(len(parts), int(ray.cluster_resources().get("CPU", 1))))
    worker = ScanWorker(run.url, run.storage_options, run.schema, grid, extremes, groups, batch_size)
    stats = RunStats(grid, extremes=extremes, groups=groups)
    progress, done = Progress(label, len(run.shards), unit="rows"), [0]
    failures: dict[str, str] = {}

    def merge(unit: dict, result: dict) -> None:
        stats.merge(result["stats"])
        done[0] += len(unit["shards"])
        progress.update(done[0], stats.total.rows)

    def failed(unit: dict, why: str) -> None:
        failures[unit["url"]] = why

    pool = executor.pool(worker, slots, depth=1)
    try:
        units = ({"url": f"part {i + 1} of {len(parts)}", "shards": part} for i, part in enumerate(parts))
        run_units(pool, units, merge, failed, Tally(), label)
    finally:
        pool.close()
    if failures:
        unit, why = next(iter(failures.items()))
        raise OSError(f"{label}: {len(failures)} part(s) of {run.url} could not be scanned ({unit}: {why})")
    progress.update(done[0], stats.total.rows, force=True)
    return stats
