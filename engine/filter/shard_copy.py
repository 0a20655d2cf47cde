"""Filtering one shard: read its scores, stream its tar, copy the kept samples' members byte for byte to
NEW/NAME.tar, then write NEW/keys/NAME.parquet and the completion marker (last)."""

from __future__ import annotations

import io
import logging
import re
import tarfile
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dpiqa import storage
from dpiqa.engine.filter.cutoff import Cutoff
from dpiqa.engine.output import OutputLocation, is_compacted_part
from dpiqa.engine.scores import ScoredShard
from dpiqa.engine.stages.source import Sample, shard_samples

log = logging.getLogger(__name__)

KEYS_DIR = "keys"
MAX_ERRORS_PER_SHARD = 50  # refused samples listed in a marker (all are counted)

KEPT_SCHEMA = pa.schema(
    [
        pa.field("shard", pa.string(), nullable=False),
        pa.field("key", pa.string()),
        pa.field("index", pa.int64(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
    ]
)


_DRIVE = re.compile(r"^[A-Za-z]:")


def unsafe_name(name: str) -> str | None:
    """Why a tar member name could escape the folder it is extracted into, or None if it cannot."""
    if not name:
        return "empty member name"
    if "\x00" in name:
        return "member name contains a NUL byte"
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return f"absolute member name {name!r}"
    if ".." in re.split(r"[/\\]", name):
        return f"member name {name!r} has a '..' component"
    return None


@dataclass
class ShardTask:
    """One input shard to filter: its URL, its output name, its scores file, what the shard was when it
    was scored (its score marker's `source`: size, ETag or modification time; empty when not recorded), and
    where its scores are (`scored`: the fields of its `engine.scores.ScoredShard`, which say where a compacted
    shard's rows lie in its part)."""

    url: str
    name: str
    scores_path: str
    source: dict = field(default_factory=dict)
    scored: dict | None = None

    def scores(self, fs, columns: list[str]) -> pa.Table:  # an fsspec filesystem
        """This shard's score rows (`ScoredShard.read`, the one way a shard's rows are read). A task made without
        its `scored` fields whose scores lie in a compacted part reads the part's rows of its URL.

        Raises:
            ValueError: no row of the part is this shard's.
        """
        if self.scored is not None:
            return ScoredShard(**self.scored).read(fs, columns)
        if not is_compacted_part(self.scores_path):
            return ScoredShard(self.name, self.url, self.scores_path, -1).read(fs, columns)
        table = storage.retry(
            lambda: pq.read_table(
                self.scores_path, columns=columns, filesystem=fs, filters=pc.field("shard") == self.url
            ),
            f"read {self.scores_path}",
        )
        if not table.num_rows:
            raise ValueError(
                f"{self.scores_path} holds no row of {self.url} (compacted under another URL?); "
                "pass the task its scored shard (ShardTask.scored)"
            )
        return table


@dataclass
class ShardResult:
    """What filtering one shard did."""

    name: str
    url: str
    kept: int = 0
    refused: int = 0
    error: str | None = None
    refusals: list[str] = field(default_factory=list)
    rows_scored: int = 0


@dataclass
class ShardFilter:
    """Filters one shard: reads its scores, streams its tar, writes the kept samples, keys and marker.

    A plain picklable callable, so the same object runs in a local thread pool or as Ray Data tasks.

    Args:
        scores_url: the score run's location (its filesystem reads the scores files).
        output_url: the filter's output location.
        cutoff: which rows are kept.
        keys_only: write no shards.
        config_hash: written into each marker.
        storage_options: fsspec options.
    """

    scores_url: str
    output_url: str
    cutoff: Cutoff
    keys_only: bool
    config_hash: str
    storage_options: dict | None = None

    def __call__(self, task: ShardTask) -> ShardResult:
        try:
            return self.run(task)
        except Exception as exc:  # reported as a failed shard; the run goes on
            log.error("filter: shard %s failed: %s: %s", task.url, type(exc).__name__, exc)
            return ShardResult(task.name, task.url, error=f"{type(exc).__name__}: {exc}")

    def run(self, task: ShardTask) -> ShardResult:
        changed = _changed_since_scored(task, self.storage_options)
        if changed:
            return ShardResult(task.name, task.url, error=changed)
        scores_fs, _ = storage.get_fs(self.scores_url, self.storage_options)
        table = task.scores(scores_fs, ["index", "key", "score", "status"])
        index = table.column("index").to_numpy()
        score_col = table.column("score")
        scores = score_col.to_numpy().astype(np.float32) if table.num_rows else np.zeros(0, np.float32)
        mask = self.cutoff.keep(
            task.name,
            table.column("status").to_numpy(zero_copy_only=False),
            np.nan_to_num(scores),
            score_col.is_valid().to_numpy(zero_copy_only=False),
            index,
        )
        keys = table.column("key").to_pylist()
        wanted = {int(index[i]): (keys[i], float(scores[i])) for i in np.flatnonzero(mask)}

        out = OutputLocation(self.output_url, self.storage_options)
        result = ShardResult(task.name, task.url)
        kept_rows: list[tuple[str, str | None, int, float]] = []
        if self.keys_only:
            kept_rows = [(task.url, k, i, s) for i, (k, s) in sorted(wanted.items())]
        else:
            kept_rows = self._copy(task, wanted, out, result)
        result.kept = len(kept_rows)
        result.rows_scored = table.num_rows
        cols = list(zip(*kept_rows, strict=True)) if kept_rows else [[], [], [], []]
        out.write_table(
            KEYS_DIR,
            task.name,
            pa.Table.from_arrays(
                [pa.array(c, f.type) for c, f in zip(cols, KEPT_SCHEMA, strict=True)], schema=KEPT_SCHEMA
            ),
        )
        out.write_marker(
            task.name,
            {
                "shard": task.url,
                "kept": result.kept,
                "refused": result.refused,
                "refusals": result.refusals[:MAX_ERRORS_PER_SHARD],
                "rows_scored": table.num_rows,
                "config_hash": self.config_hash,
                "keys_only": self.keys_only,
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        )
        return result

    def _copy(
        self, task: ShardTask, wanted: dict[int, tuple[str | None, float]], out: OutputLocation, result: ShardResult
    ) -> list[tuple[str, str | None, int, float]]:
        """Stream the input shard and write the wanted samples' members, unchanged, to NEW/NAME.tar."""

        kept: list[tuple[str, str | None, int, float]] = []
        last = max(wanted) if wanted else -1
        tar_path = storage.fs_join(out.path, f"{task.name}.tar")
        out.fs.makedirs(out.path, exist_ok=True)
        # "wb" replaces whatever a killed run left under this name. Stream mode ("w|") needs no seeking.
        with out.fs.open(tar_path, "wb") as raw, tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            if last < 0:
                return kept
            with shard_samples(task.url, self.storage_options) as samples:
                for position, sample in enumerate(samples):
                    if position in wanted:
                        key, score = wanted[position]
                        if sample.key != key:
                            raise ValueError(
                                f"sample {position} of {task.url} has key {sample.key!r} but the scores "
                                f"name {key!r}: the shard changed since it was scored"
                            )
                        if self._write_sample(tar, sample, result):
                            kept.append((task.url, key, position, score))
                    if position >= last:
                        break
                else:
                    raise ValueError(
                        f"{task.url} ended before sample {last}, which the scores name: "
                        "the shard changed since it was scored"
                    )
        return kept

    @staticmethod
    def _write_sample(tar: tarfile.TarFile, sample: Sample, result: ShardResult) -> bool:
        """Write one sample's members under their stored names, or refuse it whole if a name could escape."""
        names = {ext: sample.names.get(ext, f"{sample.key}.{ext}") for ext in sample.members}
        for name in names.values():
            why = unsafe_name(name)
            if why:
                result.refused += 1
                result.refusals.append(f"{sample.key!r}: refused: {why}")
                log.warning("filter: refused sample %r: %s", sample.key, why)
                return False
        for ext, data in sample.members.items():
            if data is None:
                continue  # a symbolic link, FIFO or device beside the image: no bytes to copy
            info = tarfile.TarInfo(names[ext])
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
        return True


def _changed_since_scored(task: ShardTask, storage_options: dict | None) -> str | None:
    """Why the shard is not the one that was scored (its size, ETag or modification time differ from what its
    score marker recorded), or None. Scores match samples by position: copying from a changed shard would keep
    the wrong samples."""
    from dpiqa.engine.stages.source import source_identity

    if not task.source:
        return None
    now = source_identity(task.url, storage_options)
    for what in ("size", "etag", "mtime"):
        if what in task.source and what in now and task.source[what] != now[what]:
            return (
                f"the shard changed since it was scored ({what} {task.source[what]} then, {now[what]} now); "
                "score it again (dpiqa score --overwrite, or into a new --output) before filtering"
            )
    return None
