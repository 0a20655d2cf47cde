"""The writer and the commit: one shard's rows, in index order, to its Parquet files, then its marker, last.

A `ShardWriter` lives for one unit of work (one shard) inside the worker that reads and scores it, so every
row of the shard passes through one place in order, and nothing else writes the shard's files. Rows go to
spool files a row group at a time (memory holds one row group, whatever the shard's size or map size), and
`commit()` is the shard's whole commit, in this order:

1. `scores/NAME.parquet` (and `maps/NAME.parquet`) moved to their final names, each whole or not at all
   (a rename on a local disk; one upload, aborted on error, on an object store);
2. `_done/NAME.json`, the marker, written last: a shard is done iff its marker exists.

The names are a function of the shard's place below the input, so a unit run again (its worker lost between
1 and 2) overwrites its files, never adds to them. Failpoints (`dpiqa.failpoints`) mark the crash points
between the steps, for the tests that kill the process there.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dpiqa.engine import schema
from dpiqa.engine.output import MAPS_DIR, SCORES_DIR, OutputLocation, Spool
from dpiqa.engine.stages.base import Batch, text_column
from dpiqa.failpoints import failpoint
from dpiqa.storage import RETRIES

ROW_GROUP_ROWS = 16_384  # score rows per row group: ~1 MB in memory before it is written out
MAP_GROUP_BYTES = 32 << 20  # quality-map bytes per row group of maps/NAME.parquet


@dataclass
class ShardFact:
    """What became of one shard: written (rows, counts by status) or failed (error). Small: this, not rows,
    is what reaches the driver."""

    url: str
    name: str
    rows: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    error: str | None = None
    marker: dict | None = None  # what its marker says (recorded in bulk by the runner: `OutputLocation.done`)


class ShardWriter:
    """Writes the rows of one shard as they come and commits them (see the module).

    Args:
        output: the run's output location.
        url: the shard.
        name: its output name.
        scores_schema: `schema.SCORES_SCHEMA` with the run's key-value metadata.
        maps_schema: the maps' schema with metadata, or None when maps are not written.
        model_name: the value of the `model` column.
        config_hash: written into the marker.
        source: what the shard was when read (size, ETag or modification time), kept in the marker so that a
            later job can tell a shard that changed since it was scored.
    """

    def __init__(
        self,
        output: OutputLocation,
        url: str,
        name: str,
        scores_schema: pa.Schema,
        maps_schema: pa.Schema | None,
        model_name: str,
        config_hash: str,
        source: dict | None = None,
    ) -> None:
        self.output, self.url, self.name = output, url, name
        self.model_name, self.config_hash, self.source = model_name, config_hash, source
        self.scores_schema, self.maps_schema = scores_schema, maps_schema
        self.spools: list[Spool] = []
        self.scores = self._open(SCORES_DIR, scores_schema)
        self.maps = self._open(MAPS_DIR, maps_schema) if maps_schema is not None else None
        self.rows = 0
        self.statuses: Counter = Counter()
        self.total: int | None = None
        self.failure: str | None = None
        self.retries = 0
        self._scores_buf: list[pa.Table] = []
        self._buffered_rows = 0
        self._maps_buf: list[pa.Table] = []
        self._buffered_map_bytes = 0

    def _open(self, folder: str, schema_: pa.Schema) -> pq.ParquetWriter:
        spool = self.output.spool(f"{folder}/{self.name}.parquet")
        self.spools.append(spool)
        return pq.ParquetWriter(spool.path, schema_, compression="zstd")

    # -- rows in --------------------------------------------------------------------------------
    def add(self, batch: Batch) -> int:
        """Take a batch of this shard's rows, in index order (the control row that ends the shard last);
        returns how many sample rows it held.

        Raises:
            ValueError: a row out of order or repeated (every sample must become exactly one row).
        """
        status = text_column(batch["status"])
        control = np.isin(status, schema.CONTROL)
        for i in np.flatnonzero(control):
            info = json.loads(batch["error"][i])
            self.retries += info.get("retries", 0)
            if status[i] == schema.SHARD_FAILED:
                self.failure = info.get("error", "unreadable shard")
            self.total = int(info["samples"])
        data = {k: v[~control] for k, v in batch.items()}
        n = int((~control).sum())
        if not n:
            return 0
        index = np.asarray(data["index"], dtype=np.int64)
        if not np.array_equal(index, np.arange(self.rows, self.rows + n)):
            raise ValueError(
                f"{self.url}: rows out of order (expected indices {self.rows}..{self.rows + n - 1}, "
                f"got {index[:3].tolist()}...)"
            )
        table = self._scores_table(data, n)
        self.statuses.update(table.column("status").to_pylist())
        self._scores_buf.append(table)
        self._buffered_rows += n
        if self.maps is not None:
            maps = self._maps_table(data)
            self._maps_buf.append(maps)
            self._buffered_map_bytes += maps.nbytes
        self.rows += n
        if self._buffered_rows >= ROW_GROUP_ROWS:
            self._flush_scores()
        if self._buffered_map_bytes >= MAP_GROUP_BYTES:
            self._flush_maps()
        return n

    def _flush_scores(self) -> None:
        if self._scores_buf:
            self.scores.write_table(pa.concat_tables(self._scores_buf))
        self._scores_buf, self._buffered_rows = [], 0

    def _flush_maps(self) -> None:
        if self._maps_buf and self.maps is not None:
            self.maps.write_table(pa.concat_tables(self._maps_buf))
        self._maps_buf, self._buffered_map_bytes = [], 0

    # -- the commit -----------------------------------------------------------------------------
    def commit(self) -> ShardFact:
        """Write the shard's files, then its marker; returns its fact. A shard the reader could not read (or
        whose rows did not all arrive) is discarded and reported failed: no file, no marker."""
        if self.failure is None and self.total != self.rows:
            self.failure = f"{self.rows} rows written of {self.total} samples read"
        if self.failure is not None:
            self.discard()
            return ShardFact(self.url, self.name, retries=self.retries, error=self.failure)
        self._flush_scores()
        self._flush_maps()
        self.scores.close()
        if self.maps is not None:
            self.maps.close()
        failpoint("commit.before_parquet", self.name)
        for spool in self.spools:
            spool.commit()
        failpoint("commit.after_parquet", self.name)
        self.retries += RETRIES.take()  # this process's own (the reads where they ran here, the uploads)
        marker = {
            "shard": self.url,
            "rows": self.rows,
            "statuses": dict(self.statuses),
            "config_hash": self.config_hash,
            "io_retries": self.retries,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if self.source:
            marker["source"] = self.source
        self.output.write_marker(self.name, marker)
        failpoint("commit.after_marker", self.name)
        return ShardFact(
            self.url, self.name, self.rows, dict(self.statuses), self.retries + RETRIES.take(), marker=marker
        )

    def discard(self) -> None:
        """Drop what was written (the unit failed or is abandoned): nothing reaches the final names."""
        for writer in (self.scores, self.maps):
            try:
                if writer is not None:
                    writer.close()
            except Exception:  # closing a spool that is dropped anyway
                pass
        for spool in self.spools:
            spool.discard()

    # -- tables ---------------------------------------------------------------------------------
    def _scores_table(self, cols: Batch, n: int) -> pa.Table:
        score = np.asarray(cols["score"], dtype=np.float32)
        width = np.asarray(cols["width"], dtype=np.int32)
        height = np.asarray(cols["height"], dtype=np.int32)
        arrays = [
            pa.array(text_column(cols["key"]), pa.string()),
            pa.array([self.url] * n, pa.string()),
            pa.array(cols["index"], pa.int64()),
            pa.array(score, pa.float32(), mask=~np.isfinite(score)),
            pa.array([self.model_name] * n, pa.string()),
            pa.array(width, pa.int32(), mask=width < 0),
            pa.array(height, pa.int32(), mask=height < 0),
            pa.array(text_column(cols["status"]), pa.string()),
            pa.array(text_column(cols["error"]), pa.string()),
        ]
        return pa.Table.from_arrays(arrays, schema=self.scores_schema)

    def _maps_table(self, cols: Batch) -> pa.Table:
        maps = cols["map"]
        has = np.array([m is not None and not (isinstance(m, float) and m != m) for m in maps], dtype=bool)
        return pa.Table.from_arrays(
            [
                pa.array(text_column(cols["key"])[has], pa.string()),
                pa.array([self.url] * int(has.sum()), pa.string()),
                pa.array(np.asarray(cols["index"])[has], pa.int64()),
                pa.array(list(maps[has]), pa.binary()),
            ],
            schema=self.maps_schema,
        )
