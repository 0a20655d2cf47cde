"""The writer: gathers each shard's rows, writes its Parquet file, then its completion marker."""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import ClassVar

import numpy as np
import pyarrow as pa

from engine import schema
from engine.output import MAPS_DIR, SCORES_DIR, OutputLocation
from engine.stages.base import Batch, text_column

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    batches: list[Batch] = field(default_factory=list)
    indices: set[int] = field(default_factory=set)
    total: int | None = None
    retries: int = 0


@dataclass
class WriteSummary:
    """What the writer did, for the manifest and the exit status."""

    shards_written: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # shard URL -> error
    statuses: Counter = field(default_factory=Counter)
    rows: int = 0
    io_retries: int = 0


class ParquetWriteStage:
    """The sink of the scoring pipeline; it runs where the output stream is consumed (the driver).

    Rows of one shard arrive in any order and, after a retried task, possibly twice: they are kept
    by `index` until the shard's end-of-shard row has arrived and every index up to its count is
    there. Then the shard's rows are written in index order to `scores/NAME.parquet` (and maps to
    `maps/NAME.parquet`), and only after that the marker `_done/NAME.json`. Memory holds only the
    shards in flight; their rows carry no pixels.

    Args:
        output: the run's output location.
        names: shard URL -> output name.
        metadata: the run identity stored in each file's Parquet key-value metadata.
        model_name: the value of the `model` column.
        config_hash: written into each marker.
        map_shape: shape of one quality map when maps are written, else None.
        io_threads: concurrent file writes (object stores are latency-bound).
    """

    name: ClassVar[str] = "write"

    def __init__(
        self,
        output: OutputLocation,
        names: dict[str, str],
        metadata: dict,
        model_name: str,
        config_hash: str,
        map_shape: tuple[int, ...] | None = None,
        io_threads: int = 4,
    ) -> None:
        self.output, self.names, self.model_name, self.config_hash = output, names, model_name, config_hash
        self.scores_schema = schema.with_metadata(schema.SCORES_SCHEMA, metadata)
        self.maps_schema = (
            schema.with_metadata(schema.MAPS_SCHEMA, {**metadata, "map_shape": list(map_shape), "map_dtype": "float16"})
            if map_shape
            else None
        )
        self.pending: dict[str, _Pending] = {}
        self.completed: set[str] = set()
        self.summary = WriteSummary()
        self.images_seen = 0
        self._pool = ThreadPoolExecutor(io_threads)
        self._writes: list[Future] = []
        self._lock = threading.Lock()

    def __call__(self, batch: Batch) -> None:
        batch = {**batch, **{k: text_column(batch[k]) for k in ("key", "status", "error") if k in batch}}
        shards = batch["shard"]
        for url in np.unique(shards):
            rows = {k: v[shards == url] for k, v in batch.items()}
            self._add(str(url), rows)

    def _add(self, url: str, rows: Batch) -> None:
        state = self.pending.setdefault(url, _Pending())
        control = np.isin(rows["status"], schema.CONTROL)
        for i in np.flatnonzero(control):
            info = json.loads(rows["error"][i])
            state.retries = max(state.retries, info.get("retries", 0))
            if rows["status"][i] == schema.SHARD_FAILED:
                self.fail(url, info.get("error", "unreadable shard"), state.retries)
                return
            state.total = int(info["samples"])
        data = {k: v[~control] for k, v in rows.items()}
        if len(data["index"]):
            state.batches.append(data)
            state.indices.update(int(i) for i in data["index"])
            self.images_seen += len(data["index"])
        if state.total is not None and len(state.indices) == state.total:
            del self.pending[url]
            self._writes.append(self._pool.submit(self._write_shard, url, state))

    def reset(self, url: str) -> None:
        """Forget the rows received so far for a shard that will be read again from the start."""
        self.pending.pop(url, None)

    def fail(self, url: str, error: str, retries: int = 0) -> None:
        """Record a shard as failed (it gets no marker; a rerun tries it again)."""
        self.pending.pop(url, None)
        self.summary.failed[url] = error
        self.summary.io_retries += retries
        log.error("shard %s failed: %s", url, error)

    def _write_shard(self, url: str, state: _Pending) -> None:
        name = self.names[url]
        cols = {k: np.concatenate([b[k] for b in state.batches]) if state.batches else np.array([])
                for k in (state.batches[0] if state.batches else {"index": None})}
        if state.batches:
            _, first = np.unique(cols["index"], return_index=True)  # sorted by index, duplicates dropped
            cols = {k: v[first] for k, v in cols.items()}
        n = len(cols.get("index", []))
        table = self._scores_table(url, cols, n)
        self.output.write_table(SCORES_DIR, name, table)
        if self.maps_schema is not None:
            self.output.write_table(MAPS_DIR, name, self._maps_table(url, cols, n))
        statuses = Counter(table.column("status").to_pylist())
        self.output.write_marker(name, {
            "shard": url,
            "rows": n,
            "statuses": dict(statuses),
            "config_hash": self.config_hash,
            "io_retries": state.retries,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
        with self._lock:
            self.completed.add(url)
            self.summary.shards_written += 1
            self.summary.rows += n
            self.summary.statuses.update(statuses)
            self.summary.io_retries += state.retries

    def _scores_table(self, url: str, cols: Batch, n: int) -> pa.Table:
        if n == 0:
            return self.scores_schema.empty_table()
        score = cols["score"].astype(np.float32)
        width = cols["width"].astype(np.int32)
        height = cols["height"].astype(np.int32)
        arrays = [
            pa.array(cols["key"], pa.string()),
            pa.array([url] * n, pa.string()),
            pa.array(cols["index"], pa.int64()),
            pa.array(score, pa.float32(), mask=~np.isfinite(score)),
            pa.array([self.model_name] * n, pa.string()),
            pa.array(width, pa.int32(), mask=width < 0),
            pa.array(height, pa.int32(), mask=height < 0),
            pa.array(cols["status"], pa.string()),
            pa.array(cols["error"], pa.string()),
        ]
        return pa.Table.from_arrays(arrays, schema=self.scores_schema)

    def _maps_table(self, url: str, cols: Batch, n: int) -> pa.Table:
        if n == 0:
            return self.maps_schema.empty_table()
        has = np.array([m is not None for m in cols["map"]], dtype=bool)
        return pa.Table.from_arrays(
            [
                pa.array(cols["key"][has], pa.string()),
                pa.array([url] * int(has.sum()), pa.string()),
                pa.array(cols["index"][has], pa.int64()),
                pa.array(list(cols["map"][has]), pa.binary()),
            ],
            schema=self.maps_schema,
        )

    def flush(self) -> None:
        """Wait for every shard write; re-raise the first failure."""
        writes, self._writes = self._writes, []
        for future in writes:
            future.result()

    def close(self) -> WriteSummary:
        """Finish all writes. Shards that never completed (their stream ended early) count as failed."""
        self.flush()
        self._pool.shutdown()
        for url, state in list(self.pending.items()):
            got = len(state.indices)
            expected = "unknown" if state.total is None else str(state.total)
            self.fail(url, f"incomplete: {got} of {expected} samples arrived", state.retries)
        return self.summary

    def progress(self) -> tuple[int, int]:
        """(shards written so far, images received so far)."""
        return self.summary.shards_written, self.images_seen
