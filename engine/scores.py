"""A scored run read back (by `audit`, `filter`, `compact` and distillation): its completed shards only, from
their own files or from the parts `dpiqa compact` merged them into, streamed with pyarrow."""

from __future__ import annotations

import logging
import posixpath
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dpiqa.engine import schema
from dpiqa.engine.output import (
    COMPACTED_DIR,
    DONE_DIR,
    MANIFEST,
    RUN_FILE,
    SCORES_DIR,
    CorruptFileError,
    OutputLocation,
)
from dpiqa.storage import is_local, retry

log = logging.getLogger(__name__)

# Repeated strings are read as dictionaries: a batch then holds each distinct value once.
DICTIONARY_COLUMNS = ("status", "source", "shard", "model")


@dataclass(frozen=True)
class ScoredShard:
    """One completed shard of a run.

    Args:
        name: its output name (`scores/NAME.parquet`, `_done/NAME.json`).
        url: the input shard's URL, from its marker.
        path: the Parquet file holding its rows, on the run's filesystem: its own `scores/NAME.parquet`, or the
            compacted part it was merged into (`compacted/part-K.parquet`).
        rows: the row count its marker states.
        source: what the input shard was when it was scored (size, ETag or modification time), from its
            marker; empty for a run before markers recorded it.
        offset: in a compacted part, the position of its first row (its rows are contiguous, in index order);
            None when `path` is its own file.
        finished: when its marker says it was written (which scoring of the shard a compacted part holds).
    """

    name: str
    url: str
    path: str
    rows: int
    source: dict = field(default_factory=dict)
    offset: int | None = None
    finished: str | None = None

    def read(self, fs, columns: list[str] | None = None) -> pa.Table:  # an fsspec filesystem
        """This shard's rows (`columns`, or all), in index order: the one way every reader reads one shard.

        Its own file is read whole; from a compacted part only the row groups holding its rows are read, and
        the rows' `shard` column is checked against its URL.

        Raises:
            ValueError: the part's rows at this shard's place belong to another shard.
        """
        if self.offset is None:

            def whole() -> pa.Table:  # ParquetFile, not read_table: no dataset set up per file (2.4x faster)
                with fs.open(self.path, "rb") as f:
                    return pq.ParquetFile(f).read(columns=columns)

            return retry(whole, f"read {self.path}")
        if self.rows == 0:
            empty = pq.read_schema(self.path, filesystem=fs).empty_table()
            return empty if columns is None else empty.select(columns)
        wanted = None if columns is None else list(dict.fromkeys([*columns, "shard"]))

        def read_rows() -> pa.Table:
            with fs.open(self.path, "rb") as f:
                part = pq.ParquetFile(f)
                starts = row_group_starts(part.metadata)
                first = max(int(np.searchsorted(starts, self.offset, side="right")) - 1, 0)
                last = max(int(np.searchsorted(starts, self.offset + self.rows, side="left")) - 1, first)
                table = part.read_row_groups(list(range(first, last + 1)), columns=wanted)
            return table.slice(self.offset - int(starts[first]), self.rows)

        table = retry(read_rows, f"read {self.path}")
        urls = table.column("shard")
        if table.num_rows != self.rows or (self.rows and not pc.all(pc.equal(urls, self.url)).as_py()):
            raise ValueError(
                f"{self.path}: rows {self.offset}..{self.offset + self.rows - 1} are not all of shard {self.url} "
                f"(its part manifest and the part disagree); run `dpiqa compact` again"
            )
        return table if columns is None or "shard" in columns else table.select(columns)


def row_group_starts(meta: pq.FileMetaData) -> np.ndarray:
    """The first row of each row group of a Parquet file, and its row count last (`len = row groups + 1`)."""
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])


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
        # Shards `dpiqa compact` merged: their rows live in a part, at an offset (the part's manifest), as long as
        # the shard's marker is the one that was compacted: a shard scored again since (`score --overwrite`, or its
        # marker deleted) is read from its new file.
        placed: dict[str, tuple[str, int, str | None]] = {}
        self.parts = self.location.compacted_parts()
        for part in self.parts:
            path, listed = f"{base}/{COMPACTED_DIR}/{part['file']}", part["shards"]
            finished = listed.get("finished") or [None] * len(listed["name"])
            for name, offset, when in zip(listed["name"], listed["offset"], finished, strict=True):
                placed[name] = (path, int(offset), when)
        self.shards = []
        for name, m in sorted(markers.items()):
            path, offset, when = placed.get(name, (None, None, None))
            if path is None or when != m.get("finished"):
                path, offset = f"{base}/{SCORES_DIR}/{name}.parquet", None
            url, rows, source = str(m.get("shard", name)), int(m.get("rows", 0)), dict(m.get("source") or {})
            self.shards.append(ScoredShard(name, url, path, rows, source, offset, m.get("finished")))
        self.compacted = sum(s.offset is not None for s in self.shards)
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
        run.compacted = sum(s.offset is not None for s in run.shards)
        run.parts = []
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
        are complete (no data read), else by reading the `score` column. Footers are read concurrently: on an
        object store each is a round trip. In a compacted part, a row group that also holds rows of shards not
        in this run (a subset of the output) has its `score` column read, so the range stays exact."""
        own = [s for s in self.shards if s.offset is None]
        with ThreadPoolExecutor(threads) as pool:
            ranges = list(pool.map(self._file_range, own))
            ranges += list(pool.map(lambda kv: self._part_range(*kv), self._by_part(self.shards).items()))
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
        return self._groups_range(shard.path, meta, list(range(meta.num_row_groups)), [])

    def _part_range(self, path: str, members: list[ScoredShard]) -> tuple[float | None, float | None]:
        meta = pq.read_metadata(path, filesystem=self.fs)
        starts = row_group_starts(meta)
        spans = sorted((s.offset, s.offset + s.rows) for s in members if s.rows)
        whole, partial = [], []
        for g in range(meta.num_row_groups):
            lo, hi = int(starts[g]), int(starts[g + 1])
            covered = sum(max(0, min(b, hi) - max(a, lo)) for a, b in spans)
            if covered == hi - lo:
                whole.append(g)
            elif covered:
                partial.append((g, [(max(a, lo) - lo, min(b, hi) - lo) for a, b in spans if a < hi and b > lo]))
        return self._groups_range(path, meta, whole, partial)

    def _groups_range(
        self, path: str, meta: pq.FileMetaData, whole: list[int], partial: list[tuple[int, list[tuple[int, int]]]]
    ) -> tuple[float | None, float | None]:
        """Min and max of the `score` column over the row groups `whole` (from their statistics where complete)
        and over the given row spans of the row groups in `partial` (read)."""
        col = meta.schema.names.index("score")
        lo, hi, read = np.inf, -np.inf, []
        for g in whole:
            chunk = meta.row_group(g).column(col)
            stats = chunk.statistics
            if chunk.num_values == 0 or (stats is not None and stats.null_count == chunk.num_values):
                continue
            if stats is None or not stats.has_min_max:
                read.append((g, [(0, meta.row_group(g).num_rows)]))
                continue
            lo, hi = min(lo, stats.min), max(hi, stats.max)
        read += partial
        if read:
            with self.fs.open(path, "rb") as f:
                pf = pq.ParquetFile(f)
                for g, spans in read:
                    column = pf.read_row_group(g, columns=["score"]).column("score")
                    for a, b in spans:
                        mm = pc.min_max(column.slice(a, b - a)).as_py()
                        if mm["min"] is not None:
                            lo, hi = min(lo, mm["min"]), max(hi, mm["max"])
        # Only ok rows carry scores (failures are null), so the statistics are the ok scores' range.
        return (float(lo) if np.isfinite(lo) else None, float(hi) if np.isfinite(hi) else None)

    @staticmethod
    def _by_part(shards: list[ScoredShard]) -> dict[str, list[ScoredShard]]:
        parts: dict[str, list[ScoredShard]] = defaultdict(list)
        for s in shards:
            if s.offset is not None:
                parts[s.path].append(s)
        return parts

    def batches(
        self, columns: list[str], batch_size: int = 65536, shards: list[ScoredShard] | None = None
    ) -> Iterator[tuple[ScoredShard, pa.RecordBatch]]:
        """Stream `columns` of every completed shard (or of `shards`), one record batch at a time with its
        shard; a batch never holds rows of two shards.

        pyarrow's scanner reads a few files and batches ahead on its own threads (bounded read-ahead),
        so memory stays flat however many rows the run has. A compacted part is read only in the row groups
        that hold the chosen shards, and its batches are split where the `shard` column changes.
        """
        chosen = self.shards if shards is None else shards
        own = {s.path: s for s in chosen if s.offset is None}
        parts = self._by_part(chosen)
        if not chosen:
            return
        read = list(columns) if not parts or "shard" in columns else [*columns, "shard"]
        fmt = ds.ParquetFileFormat(
            read_options=ds.ParquetReadOptions(dictionary_columns=[c for c in DICTIONARY_COLUMNS if c in read])
        )
        arrow_fs = arrow_filesystem(self.fs)
        fragments = [fmt.make_fragment(path, arrow_fs) for path in own]
        members: dict[str, dict[str, ScoredShard]] = {}
        for path, listed in parts.items():
            meta = retry(lambda p=path: pq.read_metadata(p, filesystem=self.fs), f"read {path}")
            starts = row_group_starts(meta)
            spans = [(s.offset, s.offset + s.rows) for s in listed if s.rows]
            groups = [
                g for g in range(meta.num_row_groups) if any(a < starts[g + 1] and b > starts[g] for a, b in spans)
            ]
            if groups:
                fragments.append(fmt.make_fragment(path, arrow_fs, row_groups=groups))
                members[path] = {s.url: s for s in listed}
        if not fragments:
            return
        dataset = ds.FileSystemDataset(fragments, self.schema, fmt, arrow_fs)
        scanner = dataset.scanner(columns=read, batch_size=batch_size, batch_readahead=4, fragment_readahead=4)
        for tagged in scanner.scan_batches():
            path, batch = tagged.fragment.path, tagged.record_batch
            if path in own:
                yield own[path], batch if len(read) == len(columns) else batch.select(columns)
                continue
            by_url = members[path]
            for url, piece in split_by_shard(batch):
                shard = by_url.get(url)
                if shard is not None:  # rows of shards not chosen share the boundary row groups
                    yield shard, piece if len(read) == len(columns) else piece.select(columns)

    def read_shard(self, shard: ScoredShard, columns: list[str] | None = None) -> pa.Table:
        """One shard's rows, in index order, wherever they live (`ScoredShard.read`)."""
        return shard.read(self.fs, columns)

    def keys(self, shard: ScoredShard, indices: list[int]) -> dict[int, str | None]:
        """The `key` of the rows at `indices` of one shard."""
        table = self.read_shard(shard, ["index", "key"])
        table = table.filter(pc.is_in(table.column("index"), pa.array(indices, pa.int64())))
        return dict(zip(table.column("index").to_pylist(), table.column("key").to_pylist(), strict=True))


def arrow_filesystem(fs) -> pafs.FileSystem:  # an fsspec filesystem
    """The pyarrow filesystem a dataset's fragments are made with: pyarrow's own for a local disk (as
    `ds.dataset` does for fsspec's local filesystem), else the fsspec filesystem wrapped."""
    if is_local(fs):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def split_by_shard(batch: pa.RecordBatch) -> Iterator[tuple[str, pa.RecordBatch]]:
    """A record batch of a compacted part cut where its `shard` column changes: `(shard URL, rows)` pieces."""
    column = batch.column("shard")
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    codes = column.indices.to_numpy(zero_copy_only=False)
    values = column.dictionary.to_pylist()
    cuts = [0, *(np.flatnonzero(codes[1:] != codes[:-1]) + 1).tolist(), len(codes)]
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        if b > a:
            yield values[codes[a]], batch.slice(a, b - a)
