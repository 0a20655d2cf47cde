"""`dpiqa compact`: a finished score output's per-shard score files merged into large sorted Parquet parts.

Layout (below the score output OUT):

    OUT/compacted/part-K.parquet   rows of many whole shards, sorted by shard URL then index; row groups of
                                   whole shards of about `ROW_GROUP_ROWS` rows; written whole (`Spool`)
    OUT/compacted/_part-K.json     its manifest, written AFTER the part (a part is complete iff its manifest
                                   exists): file, rows, bytes, row groups, and per shard its name, URL, rows
                                   and first row in the part (`offset`)

The per-shard files a complete part holds (`scores/NAME.parquet`) are deleted after its manifest; the markers
(`_done/NAME.json`) stay, so `dpiqa score` keeps treating those shards as done, and every reader
(`engine.scores.ScoredRun`) finds a shard's rows in its part. Only scores are compacted: quality maps
(`maps/NAME.parquet`, 64 KB per image) stay per shard.

Crash safety (each step is a failpoint, `compact.<step>`): a kill before a part's manifest leaves a part file no
reader uses, which the next run deletes and writes again; a kill after it leaves per-shard files that a complete
part already holds, which the next run deletes. So a rerun finishes the work and loses or duplicates no row.
Safe while nothing else writes the output (no `score` run on it): a shard scored while compaction runs could
be missed by this run (it is compacted by the next) but is never lost.

How the part size was chosen (from the systems users query such data with):
- Delta Lake's OPTIMIZE bin-packs files smaller than a target into files of about that target
  (`spark.databricks.delta.optimize.maxFileSize`, 1 GB) and is idempotent: run twice, the second does nothing.
  Taken: bin-packing of whole input files (a shard is never split across parts), idempotence.
- Iceberg's rewrite_data_files targets `target-file-size-bytes` (512 MB by default) and, with
  `partial-progress.enabled`, commits each file group as it finishes, so a failed rewrite keeps the groups it
  committed. Taken: each part is committed on its own (its manifest), a killed run loses only the part in flight.
- Ray Data's `write_parquet(min_rows_per_file=...)` buffers blocks until a file holds at least that many rows:
  a lower bound, files may be larger. Taken: a part is closed as soon as it reaches the target (measured on
  the written file, so the bound is in bytes, which engines care about, not rows), and the last part of a run
  is whatever is left.
The default target, 256 MB, lies inside the 128-512 MB that Parquet readers (Spark, Trino/Athena, DuckDB) scan
well; row groups of ~128 K rows are DuckDB's size (122,880) and let a reader of one shard read one row group.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dpiqa.engine.output import COMPACTED_DIR, SCORES_DIR, OutputLocation, part_number
from dpiqa.engine.scores import ScoredRun, ScoredShard
from dpiqa.errors import UsageError
from dpiqa.failpoints import failpoint

log = logging.getLogger(__name__)

TARGET_MB = 256.0
ROW_GROUP_ROWS = 131_072  # a row group closes at the first shard boundary past this many rows
READ_AHEAD = 64  # shard files read ahead of the writer (bounded memory: at most this many shards' rows)


@dataclass
class CompactConfig:
    """What `dpiqa compact` does.

    Args:
        scores: the `dpiqa score` output to compact (local folder or fsspec URL).
        target_mb: close a part once its file reaches this many MB (the last part of a run may be smaller).
        row_group_rows: rows per row group (row groups end at shard boundaries, so they hold whole shards).
        threads: per-shard files read concurrently (on an object store each is a round trip).
        storage_options: fsspec options.
    """

    scores: str
    target_mb: float = TARGET_MB
    row_group_rows: int = ROW_GROUP_ROWS
    threads: int = 16
    storage_options: dict | None = None

    def __post_init__(self) -> None:
        if not self.target_mb > 0:
            raise UsageError(f"--target-mb must be > 0, not {self.target_mb}")
        if self.row_group_rows < 1:
            raise UsageError(f"--row-group-rows must be >= 1, not {self.row_group_rows}")


@dataclass
class CompactResult:
    """What a compaction did."""

    parts: list[dict] = field(default_factory=list)  # the manifests of the parts this run wrote
    already: int = 0  # shards compacted by an earlier run
    removed: int = 0  # per-shard score files deleted (including those an interrupted run left)
    cleaned: int = 0  # incomplete part files an interrupted run left, deleted
    seconds: float = 0.0

    @property
    def shards(self) -> int:
        return sum(len(p["shards"]["name"]) for p in self.parts)

    @property
    def rows(self) -> int:
        return sum(p["rows"] for p in self.parts)

    @property
    def bytes(self) -> int:
        return sum(p["bytes"] for p in self.parts)


def compact(config: CompactConfig) -> CompactResult:
    """Merge the completed shards' score files of `config.scores` into parts (see the module).

    Raises:
        ValueError: the location holds no completed shard, or a shard's file disagrees with its marker.
    """
    t0 = time.monotonic()
    run = ScoredRun(config.scores, config.storage_options)
    out = run.location
    result = CompactResult(already=run.compacted)
    # 1. Parts no shard is read from any more (every shard in them scored again since: `score --overwrite`): their
    # manifest first, so that a kill leaves a part without one. Then what an interrupted run left: part files
    # without a manifest (no reader uses them), and per-shard files of shards a complete part holds.
    live = {(s.path, s.offset) for s in run.shards if s.offset is not None}
    base = out.path.rstrip("/")
    for part in run.parts:
        path, offsets = f"{base}/{COMPACTED_DIR}/{part['file']}", part["shards"]["offset"]
        used = sum((path, offset) in live for offset in offsets)
        if not used:
            log.info("compact: %s: every shard in it was scored again since; deleting it", part["file"])
            out.remove_files([f"{COMPACTED_DIR}/_{part['file'].rsplit('.', 1)[0]}.json"])
        elif used < len(offsets):
            log.warning(
                "compact: %s: %d of its %d shards were scored again since: readers of this output skip its rows of "
                "them, a query over compacted/*.parquet does not",
                part["file"],
                len(offsets) - used,
                len(offsets),
            )
    result.cleaned = _remove_incomplete_parts(out)
    compacted = {s.name for s in run.shards if s.offset is not None}
    leftovers = sorted(out.listed_names(SCORES_DIR, ".parquet") & compacted)
    if leftovers:
        out.remove_files([f"{SCORES_DIR}/{n}.parquet" for n in leftovers])
        result.removed += len(leftovers)
        log.info("compact: deleted %d per-shard files already held by complete parts", len(leftovers))
    # 2. The shards still in their own files, by URL (rows sorted by shard URL, then index), into new parts.
    todo = sorted((s for s in run.shards if s.offset is None), key=lambda s: (s.url, s.name))
    parts = out.compacted_parts()
    number = max((part_number(p["file"]) for p in parts), default=-1) + 1
    log.info(
        "compact: %d shards to compact (%s rows), %d already compacted, into parts of ~%g MB at %s",
        len(todo),
        f"{sum(s.rows for s in todo):,}",
        result.already,
        config.target_mb,
        out.child(COMPACTED_DIR),
    )
    writer: PartWriter | None = None
    try:
        for shard, table in _read_ahead(run, todo, config.threads):
            if writer is None:
                writer = PartWriter(out, number, table.schema, config.row_group_rows)
            writer.add(shard, table)
            if writer.size() >= config.target_mb * (1 << 20):
                result.parts.append(_finish(out, writer, result))
                writer, number = None, number + 1
        if writer is not None:
            result.parts.append(_finish(out, writer, result))
    except BaseException:
        if writer is not None:
            writer.discard()  # the part in flight: its spool file, never its final name
        raise
    result.seconds = time.monotonic() - t0
    return result


def _finish(out: OutputLocation, writer: PartWriter, result: CompactResult) -> dict:
    """Commit a part, then its manifest, then delete the per-shard files it replaced (in this order)."""
    manifest = writer.commit()
    failpoint("compact.after_part", manifest["file"])
    out.write_json(f"{COMPACTED_DIR}/_{manifest['file'].rsplit('.', 1)[0]}.json", manifest)
    failpoint("compact.after_manifest", manifest["file"])
    names = manifest["shards"]["name"]
    for i in range(0, len(names), 1000):
        out.remove_files([f"{SCORES_DIR}/{n}.parquet" for n in names[i : i + 1000]])
        failpoint("compact.after_delete", manifest["file"])
    result.removed += len(names)
    log.info(
        "compact: %s: %d shards, %s rows, %.1f MB",
        manifest["file"],
        len(names),
        f"{manifest['rows']:,}",
        manifest["bytes"] / (1 << 20),
    )
    return manifest


def _remove_incomplete_parts(out: OutputLocation) -> int:
    """Delete part files that have no manifest (a kill between the part and its manifest) and, on a local disk,
    spool files a killed writer left; returns how many."""
    complete = out.listed_names(COMPACTED_DIR, ".json")
    stale = [
        f"{COMPACTED_DIR}/{name}.parquet"
        for name in out.listed_names(COMPACTED_DIR, ".parquet")
        if f"_{name}" not in complete
    ]
    folder = out._p(COMPACTED_DIR)
    if out.local and os.path.isdir(folder):
        stale += [f"{COMPACTED_DIR}/{n}" for n in os.listdir(folder) if n.startswith(".") and n.endswith(".tmp")]
    if stale:
        log.info("compact: deleting %d incomplete part files an interrupted run left", len(stale))
        out.remove_files(stale)
    return len(stale)


def _read_ahead(run: ScoredRun, shards: list[ScoredShard], threads: int) -> Iterator[tuple[ScoredShard, pa.Table]]:
    """The shards' tables in order, read `threads` at a time at most `READ_AHEAD` ahead of the consumer.

    Raises:
        ValueError: a file's rows are not its marker's count, in index order 0..n-1.
    """

    def read(shard: ScoredShard) -> tuple[ScoredShard, pa.Table]:
        table = run.read_shard(shard)
        index = table.column("index").to_numpy()
        if table.num_rows != shard.rows or not np.array_equal(index, np.arange(shard.rows)):
            raise ValueError(
                f"{shard.path}: {table.num_rows} rows (indices {index[:3].tolist()}...) but its marker states "
                f"{shard.rows} in index order; score the shard again (delete its marker) before compacting"
            )
        return shard, table

    with ThreadPoolExecutor(threads) as pool:
        pending = []
        for shard in shards:
            pending.append(pool.submit(read, shard))
            if len(pending) >= READ_AHEAD:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


class PartWriter:
    """One part being written: whole shards appended in order to a spooled Parquet file, row groups cut at
    shard boundaries, then committed whole with its manifest.

    Args:
        out: the score output.
        number: the part's number K (`compacted/part-K.parquet`).
        schema: the shards' schema, with the run's key-value metadata (model identity).
        row_group_rows: a row group is written once it holds this many rows.
    """

    def __init__(self, out: OutputLocation, number: int, schema: pa.Schema, row_group_rows: int) -> None:
        self.out, self.schema, self.row_group_rows = out, schema, row_group_rows
        self.file = f"part-{number:05d}.parquet"
        self.spool = out.spool(f"{COMPACTED_DIR}/{self.file}")
        names = schema.names
        self.writer = pq.ParquetWriter(
            self.spool.path,
            schema,
            compression="zstd",
            sorting_columns=[pq.SortingColumn(names.index("shard")), pq.SortingColumn(names.index("index"))],
        )
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.rows = 0
        self.row_groups = 0
        self.shards: dict[str, list] = {"name": [], "url": [], "rows": [], "offset": [], "finished": []}

    def add(self, shard: ScoredShard, table: pa.Table) -> None:
        """Append one shard's rows (its whole file, in index order).

        Raises:
            ValueError: its columns differ from the part's.
        """
        if not table.schema.equals(self.schema, check_metadata=False):
            raise ValueError(f"{shard.path}: columns {table.schema} differ from the other shards' {self.schema}")
        facts = {"name": shard.name, "url": shard.url, "rows": table.num_rows, "offset": self.rows}
        for key, value in {**facts, "finished": shard.finished}.items():
            self.shards[key].append(value)
        self.buffer.append(table.replace_schema_metadata(self.schema.metadata))
        self.buffered += table.num_rows
        self.rows += table.num_rows
        if self.buffered >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        if self.buffered:
            group = pa.concat_tables(self.buffer)
            self.writer.write_table(group, row_group_size=max(group.num_rows, 1))
            self.row_groups += 1
        self.buffer, self.buffered = [], 0

    def size(self) -> int:
        """Bytes of the part written so far (row groups written; the buffer not yet)."""
        return os.path.getsize(self.spool.path)

    def discard(self) -> None:
        """Drop the part being written (an error stopped the run): its spool file goes, nothing reaches its name."""
        try:
            self.writer.close()
        except Exception:  # closing a file that is dropped anyway
            pass
        self.spool.discard()

    def commit(self) -> dict:
        """Close and commit the part (whole or not at all); returns its manifest (not yet written)."""
        self._flush()
        self.writer.close()
        size = os.path.getsize(self.spool.path)
        self.spool.commit()
        return {
            "file": self.file,
            "rows": self.rows,
            "bytes": size,
            "row_groups": self.row_groups,
            "shards": self.shards,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }


def summary_line(result: CompactResult, url: str) -> str:
    """What a compaction did, in one line."""
    return (
        f"compacted {result.shards:,} shards ({result.rows:,} rows) into {len(result.parts)} parts "
        f"({result.bytes / (1 << 20):,.1f} MB) -> {url.rstrip('/')}/{COMPACTED_DIR}/; {result.already:,} shards "
        f"were compacted before; {result.removed:,} per-shard score files deleted; markers kept "
        f"({result.seconds:.1f} s)"
    )
