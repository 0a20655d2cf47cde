"""The writer: per-shard Parquet files written where the rows are (Ray workers), never by the driver.

`WriteStage` is the last stage of the scoring pipeline. It runs beside the scorer and hands each row to
the `ShardWriter` that owns the row's shard (a Ray actor, one per owner slot; in-process for the local
executor). A shard writer gathers its shards' rows, and when a shard is complete writes
`scores/NAME.parquet` (and `maps/NAME.parquet`) in index order, then the marker `_done/NAME.json`, last.
The pipeline's output to the driver is one small count per block; the driver learns what happened to each
shard from the writers (`drain`) and from the markers.

Why actors that own shards, and not Ray Data's own `write_*`: a shard's rows are scored in many blocks,
by several actors, in any order; one file per shard with a marker written last needs one place where all
of a shard's rows meet. Ray Data's sinks write each block where it is (a file per block). Owning shards
by a hash of their name spreads the writing over as many processes (and nodes) as there are writers.
"""

from __future__ import annotations

import json
import logging
import threading
import zlib
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from dpiqa.engine import schema
from dpiqa.engine.output import MAPS_DIR, SCORES_DIR, OutputLocation
from dpiqa.engine.stages.base import Batch, Stage, text_column
from dpiqa.storage import RETRIES

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    batches: list[Batch] = field(default_factory=list)
    indices: set[int] = field(default_factory=set)
    total: int | None = None
    retries: int = 0


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


class ShardWriter:
    """Gathers the rows of the shards it owns and writes each shard when it is complete.

    Rows of one shard arrive in any order and, after a retried task, possibly twice: they are kept by
    `index` until the shard's end-of-shard row has arrived and every index up to its count is there. Then
    the shard's rows are written in index order to `scores/NAME.parquet` (and maps to `maps/NAME.parquet`),
    and only after that the marker `_done/NAME.json`. Memory holds only the shards in flight; their rows
    carry no pixels (quality maps when they are written).

    Safe to call from several threads (a threaded Ray actor serves `add` while files are written).

    Args:
        output: the run's output location (URL and storage options; each writer opens its own filesystem).
        names: shard URL -> output name.
        metadata: the run identity stored in each file's Parquet key-value metadata.
        model_name: the value of the `model` column.
        config_hash: written into each marker.
        map_shape: shape of one quality map when maps are written, else None.
        io_threads: concurrent file writes (object stores are latency-bound).
    """

    def __init__(
        self,
        output: OutputLocation | tuple[str, dict | None],
        names: dict[str, str],
        metadata: dict,
        model_name: str,
        config_hash: str,
        map_shape: tuple[int, ...] | None = None,
        io_threads: int = 4,
    ) -> None:
        self.output = output if isinstance(output, OutputLocation) else OutputLocation(*output)
        self.names, self.model_name, self.config_hash = names, model_name, config_hash
        self.scores_schema = schema.with_metadata(schema.SCORES_SCHEMA, metadata)
        self.maps_schema = (
            schema.with_metadata(schema.MAPS_SCHEMA, {**metadata, "map_shape": list(map_shape), "map_dtype": "float16"})
            if map_shape
            else None
        )
        self.pending: dict[str, _Pending] = {}
        self.images = 0
        self._facts: list[ShardFact] = []
        self._pool = ThreadPoolExecutor(io_threads)
        self._writes: list[Future] = []
        self._lock = threading.Lock()

    # -- rows in --------------------------------------------------------------------------------
    def add(self, batch: Batch) -> int:
        """Take rows (any shards this writer owns); returns how many image rows it took."""
        batch = {**batch, **{k: text_column(batch[k]) for k in ("key", "status", "error") if k in batch}}
        shards = batch["shard"]
        taken = 0
        for url in np.unique(shards):
            rows = {k: v[shards == url] for k, v in batch.items()}
            taken += self._add(str(url), rows)
        return taken

    def _add(self, url: str, rows: Batch) -> int:
        control = np.isin(rows["status"], schema.CONTROL)
        data = {k: v[~control] for k, v in rows.items()}
        with self._lock:
            state = self.pending.setdefault(url, _Pending())
            for i in np.flatnonzero(control):
                info = json.loads(rows["error"][i])
                state.retries += info.get("retries", 0)  # each reader reports its retries once (a delta)
                if rows["status"][i] == schema.SHARD_FAILED:
                    self._fail(url, info.get("error", "unreadable shard"), state.retries)
                    return 0
                state.total = int(info["samples"])
            if len(data["index"]):
                state.batches.append(data)
                state.indices.update(int(i) for i in data["index"])
                self.images += len(data["index"])
            if state.total is not None and len(state.indices) == state.total:
                del self.pending[url]
                self._writes.append(self._pool.submit(self._write_shard, url, state))
        return len(data["index"])

    def _fail(self, url: str, error: str, retries: int = 0) -> None:
        self.pending.pop(url, None)
        self._facts.append(ShardFact(url, self.names.get(url, ""), retries=retries, error=error))
        log.error("shard %s failed: %s", url, error)

    # -- files out ------------------------------------------------------------------------------
    def _write_shard(self, url: str, state: _Pending) -> None:
        name = self.names[url]
        try:
            cols = {k: np.concatenate([b[k] for b in state.batches]) for k in state.batches[0]} if state.batches else {}
            if cols:
                _, first = np.unique(cols["index"], return_index=True)  # sorted by index, duplicates dropped
                cols = {k: v[first] for k, v in cols.items()}
            n = len(cols.get("index", []))
            table = self._scores_table(url, cols, n)
            self.output.write_table(SCORES_DIR, name, table)
            if self.maps_schema is not None:
                self.output.write_table(MAPS_DIR, name, self._maps_table(url, cols, n))
            statuses = dict(Counter(table.column("status").to_pylist()))
            state.retries += RETRIES.take()  # this process's own (the writes; the reads where they ran here)
            self.output.write_marker(
                name,
                {
                    "shard": url,
                    "rows": n,
                    "statuses": statuses,
                    "config_hash": self.config_hash,
                    "io_retries": state.retries,
                    "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                },
            )
        except Exception as exc:  # noqa: BLE001 - a write that failed after its retries fails this shard only
            with self._lock:
                self._fail(url, f"writing its output failed: {type(exc).__name__}: {exc}", state.retries)
            return
        retries = state.retries + RETRIES.take()  # and those of the marker's own upload
        with self._lock:
            self._facts.append(ShardFact(url, name, n, statuses, retries))

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
        has = np.array([m is not None and not (isinstance(m, float) and m != m) for m in cols["map"]], dtype=bool)
        return pa.Table.from_arrays(
            [
                pa.array(cols["key"][has], pa.string()),
                pa.array([url] * int(has.sum()), pa.string()),
                pa.array(cols["index"][has], pa.int64()),
                pa.array(list(cols["map"][has]), pa.binary()),
            ],
            schema=self.maps_schema,
        )

    # -- reports --------------------------------------------------------------------------------
    def drain(self, wait: bool = False) -> dict[str, Any]:
        """The facts of shards finished (written or failed) since the last call, the image rows taken so far
        and the shards in flight; with `wait`, after every started write has finished."""
        if wait:
            with self._lock:
                writes, self._writes = self._writes, []
            for future in writes:
                future.result()
        with self._lock:
            facts, self._facts = self._facts, []
            self._writes = [f for f in self._writes if not f.done()]
            return {"facts": [asdict(f) for f in facts], "images": self.images, "in_flight": sorted(self.pending)}

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def owner(url: str, writers: int) -> int:
    """Which of `writers` owns a shard: a stable hash of its URL (the same in every process and run)."""
    return zlib.crc32(url.encode("utf-8", "surrogateescape")) % writers


class WriterLost(RuntimeError):
    """A shard writer died or stopped answering during an attempt (what it had not written is written by the
    next attempt)."""


class WriteStage(Stage):
    """Hands each row to the writer that owns its shard; returns one row per call: how many image rows went
    out (what the driver reads to show progress). On Ray Data it runs inside the scoring actor's call
    (`beside_actor`), on the rows just scored, so rows leave the scoring process only towards their writer.

    Args:
        writers: `ShardWriter`s in this process (local executor) or Ray actor handles of them.
        batch_size: rows per call when it runs on its own; None (the default) takes each block as it comes, so
            that a shard is written as soon as its last rows are scored.
        timeout: seconds to wait for a writer to take rows before the attempt fails with `WriterLost`.
    """

    name: ClassVar[str] = "write"
    beside_actor = True  # runs in the scoring actor's call, on the rows it has just scored

    def __init__(
        self, writers: list, batch_size: int | None = None, num_cpus: float = 0.25, timeout: float = 120.0
    ) -> None:
        self.writers, self.batch_size, self.num_cpus, self.timeout = writers, batch_size, num_cpus, timeout

    def __call__(self, batch: Batch) -> Batch:
        groups: dict[int, list[str]] = {}
        for url in np.unique(batch["shard"]):
            groups.setdefault(owner(str(url), len(self.writers)), []).append(str(url))
        pending, taken = [], 0
        for slot, urls in groups.items():
            mask = np.isin(batch["shard"], urls)
            part = {k: v[mask] for k, v in batch.items() if k not in ("image", "jpeg", "on_device")}
            writer = self.writers[slot]
            if hasattr(writer, "add") and not hasattr(writer.add, "remote"):
                taken += writer.add(part)
            else:
                pending.append(writer.add.remote(part))
        if pending:  # waiting here is the backpressure: rows are never sent faster than writers take them
            import ray

            try:
                taken += sum(ray.get(pending, timeout=self.timeout))
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
                # `add` only files rows in memory: a writer that does not answer in minutes is gone or stuck
                # (the driver, which checks every writer when an attempt ends, decides whether to retry).
                raise WriterLost(f"a shard writer did not take rows ({type(exc).__name__})") from None
        return {"images": np.asarray([taken], dtype=np.int64)}
