"""A scored run read back (by `audit` and `filter`): its completed shards only, streamed with pyarrow."""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from dpiqa.engine import schema
from dpiqa.engine.output import DONE_DIR, MANIFEST, RUN_FILE, SCORES_DIR, CorruptFileError, OutputLocation

log = logging.getLogger(__name__)

# Repeated strings are read as dictionaries: a batch then holds each distinct value once.
DICTIONARY_COLUMNS = ("status", "source", "shard", "model")


@dataclass(frozen=True)
class ScoredShard:
    """One completed shard of a run.

    Args:
        name: its output name (`scores/NAME.parquet`, `_done/NAME.json`).
        url: the input shard's URL, from its marker.
        path: the Parquet file's path on the run's filesystem.
        rows: the row count its marker states.
        source: what the input shard was when it was scored (size, ETag or modification time), from its
            marker; empty for a run before markers recorded it.
    """

    name: str
    url: str
    path: str
    rows: int
    source: dict = field(default_factory=dict)


def source_of(url: str) -> str:
    """The source of a shard without a `source` column: the folder it lies in (`s3://b/p/a/1.tar` ->
    `s3://b/p/a`)."""
    return posixpath.dirname(url.rstrip("/")) or "."


class ScoredRun:
    """The output of a `dpiqa score` run, restricted to shards whose completion marker exists (a
    shard being written, or abandoned half-way, is not read).

    Args:
        url: the run's output location (local or any fsspec URL).
        storage_options: fsspec options.

    Raises:
        ValueError: the location holds no completed shard.
    """

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        self.url, self.storage_options = url, storage_options
        self.location = OutputLocation(url, storage_options)
        self.fs = self.location.fs
        markers = self.location.done()
        if not markers:
            raise ValueError(
                f"{url}: no completed shard (no {url.rstrip('/')}/_done/*.json); "
                "is it the --output of a `dpiqa score` run?"
            )
        base = self.location.path.rstrip("/")
        self.shards = [
            ScoredShard(
                name,
                str(m.get("shard", name)),
                f"{base}/{SCORES_DIR}/{name}.parquet",
                int(m.get("rows", 0)),
                dict(m.get("source") or {}),
            )
            for name, m in sorted(markers.items())
        ]
        self.by_path = {s.path: s for s in self.shards}
        self.manifest = self._optional_json(MANIFEST)
        self.run_info = self._optional_json(RUN_FILE)
        try:
            self.schema = pq.read_schema(self.shards[0].path, filesystem=self.fs)
        except (pa.ArrowException, OSError) as exc:
            raise self._unreadable(self.shards[0], exc) from None
        self.has_source = "source" in self.schema.names

    @classmethod
    def part(cls, url: str, storage_options: dict | None, shards: list[ScoredShard], schema: pa.Schema) -> ScoredRun:
        """Some shards of a run, known already (no markers read): what one worker of a distributed scan reads."""
        run = cls.__new__(cls)
        run.url, run.storage_options = url, storage_options
        run.location = OutputLocation(url, storage_options)
        run.fs = run.location.fs
        run.shards = list(shards)
        run.by_path = {s.path: s for s in run.shards}
        run.manifest = run.run_info = None
        run.schema, run.has_source = schema, "source" in schema.names
        return run

    def subset(self, names: set[str], empty_ok: bool = False) -> ScoredRun:
        """The completed shards among `names` (output names), as a run of their own (the same location).

        Args:
            names: output names.
            empty_ok: return a run of no shard when none is completed (a night with nothing new), not an error.

        Raises:
            ValueError: none of them is completed (without `empty_ok`).
        """
        shards = [s for s in self.shards if s.name in names]
        if not shards and not empty_ok:
            raise ValueError(f"{self.url}: none of the {len(names)} shards selected has a completion marker")
        part = ScoredRun.part(self.url, self.storage_options, shards, self.schema)
        part.manifest, part.run_info = self.manifest, self.run_info
        return part

    def _optional_json(self, rel: str) -> dict | None:
        """A run file that only adds information: one cut short is named in a warning and left out."""
        try:
            return self.location.read_json(rel)
        except CorruptFileError as exc:
            log.warning("%s; reading the completed shards without it", exc)
            return None

    def identity(self) -> dict:
        """Model identity from the Parquet key-value metadata (model, checkpoint hash, code version)."""
        return schema.read_metadata(self.schema)

    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def score_range(self, threads: int = 16) -> tuple[float | None, float | None]:
        """Exact min and max of the ok scores, from the Parquet footers' column statistics where they
        are complete (no data read), else by reading that file's `score` column. Footers are read
        concurrently: on an object store each is a round trip."""
        with ThreadPoolExecutor(threads) as pool:
            ranges = list(pool.map(self._file_range, self.shards))
        lows = [lo for lo, _ in ranges if lo is not None]
        highs = [hi for _, hi in ranges if hi is not None]
        return (min(lows) if lows else None, max(highs) if highs else None)

    def _unreadable(self, shard: ScoredShard, exc: BaseException) -> ValueError:
        """One line naming a scores file pyarrow cannot read (its own message, "Parquet magic bytes not found in
        footer", names none) and how to score its shard again."""
        marker = self.location.child(DONE_DIR, f"{shard.name}.json")
        return ValueError(
            f"{self.location.child(SCORES_DIR, shard.name + '.parquet')}: not a readable Parquet file "
            f"({str(exc).splitlines()[0]}); cut short or damaged: delete {marker} and rerun `dpiqa score` "
            "to score its shard again"
        )

    def _file_range(self, shard: ScoredShard) -> tuple[float | None, float | None]:
        try:
            meta = pq.read_metadata(shard.path, filesystem=self.fs)
        except (pa.ArrowException, OSError) as exc:
            raise self._unreadable(shard, exc) from None
        col = meta.schema.names.index("score")
        lo, hi, complete = np.inf, -np.inf, True
        for g in range(meta.num_row_groups):
            chunk = meta.row_group(g).column(col)
            stats = chunk.statistics
            if chunk.num_values == 0 or (stats is not None and stats.null_count == chunk.num_values):
                continue
            if stats is None or not stats.has_min_max:
                complete = False
                break
            lo, hi = min(lo, stats.min), max(hi, stats.max)
        if not complete:
            table = pq.read_table(shard.path, columns=["score"], filesystem=self.fs)
            mm = pc.min_max(table.column("score")).as_py()
            lo = mm["min"] if mm["min"] is not None else np.inf
            hi = mm["max"] if mm["max"] is not None else -np.inf
        # Only ok rows carry scores (failures are null), so the statistics are the ok scores' range.
        return (float(lo) if np.isfinite(lo) else None, float(hi) if np.isfinite(hi) else None)

    def batches(
        self, columns: list[str], batch_size: int = 65536, shards: list[ScoredShard] | None = None
    ) -> Iterator[tuple[ScoredShard, pa.RecordBatch]]:
        """Stream `columns` of every completed shard (or of `shards`), one record batch at a time with its
        shard.

        pyarrow's scanner reads a few files and batches ahead on its own threads (bounded read-ahead),
        so memory stays flat however many rows the run has.
        """
        fmt = ds.ParquetFileFormat(
            read_options=ds.ParquetReadOptions(dictionary_columns=[c for c in DICTIONARY_COLUMNS if c in columns])
        )
        paths = [s.path for s in (self.shards if shards is None else shards)]
        if not paths:
            return
        dataset = ds.dataset(paths, schema=self.schema, format=fmt, filesystem=self.fs)
        scanner = dataset.scanner(columns=columns, batch_size=batch_size, batch_readahead=4, fragment_readahead=4)
        for tagged in scanner.scan_batches():
            yield self.by_path[tagged.fragment.path], tagged.record_batch

    def keys(self, shard: ScoredShard, indices: list[int]) -> dict[int, str | None]:
        """The `key` of the rows at `indices` of one shard (a filtered read of two columns)."""
        table = pq.read_table(
            shard.path, columns=["index", "key"], filesystem=self.fs, filters=pc.field("index").isin(indices)
        )
        return dict(zip(table.column("index").to_pylist(), table.column("key").to_pylist(), strict=True))
