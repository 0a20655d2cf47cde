"""The shard reader: streams a WebDataset tar's members and groups them into samples, one row each."""

from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from engine import schema
from engine.io import RetryCounter, RetryingReader, get_fs, is_transient
from engine.stages.base import Batch, Stage

ROW_COLUMNS = ("shard", "index", "key", "ext", "data", "status", "error")

# WebDataset's key convention, as `webdataset.tariterators.base_plus_ext` states it: the key is the
# member path up to the first dot of its file name, the extension is the rest. Repeated here because
# importing webdataset imports torch (~600 MB), which the shard reader of `audit`/`filter` must not pay.
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def base_plus_ext(path: str) -> tuple[str | None, str | None]:
    """`a/b.seg.jpg` -> `("a/b", "seg.jpg")`; `(None, None)` for a name without an extension."""
    match = _KEY_EXT.match(path)
    return (match.group(1), match.group(2)) if match else (None, None)


@dataclass
class Sample:
    """One WebDataset sample: the members sharing a key (`__key__`), by lower-case extension."""

    key: str | None
    members: dict[str, bytes] = field(default_factory=dict)
    status: str = schema.OK
    error: str | None = None
    names: dict[str, str] = field(default_factory=dict)  # lower-case extension -> member name as stored

    def image_member(self) -> tuple[str, bytes] | None:
        for ext in schema.IMAGE_EXTENSIONS:
            if ext in self.members:
                return ext, self.members[ext]
        return None


class _Tap(io.RawIOBase):
    """Passes bytes through to `tarfile` and keeps the most recent ones, so that when tarfile's stream
    mode stops we can tell a proper end-of-archive block from a truncated or corrupt header (tarfile
    silently treats both as the end of the archive once past the first member)."""

    def __init__(self, raw: io.RawIOBase | io.BufferedIOBase, keep: int = 1 << 16) -> None:
        super().__init__()
        self.raw, self.keep = raw, keep
        self.tail = b""
        self.total = 0  # bytes handed to tarfile so far

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # noqa: ANN001 - buffer protocol
        data = self.raw.read(len(b))
        n = len(data)
        b[:n] = data
        self.total += n
        self.tail = (self.tail + data)[-self.keep :]
        return n

    def block_at(self, offset: int, size: int = tarfile.BLOCKSIZE) -> bytes | None:
        """The bytes at absolute `offset` if still kept (None if they scrolled away)."""
        start = self.total - len(self.tail)
        if offset < start:
            return None
        rest = self.tail[offset - start :]
        if len(rest) < size:  # the header read may have asked for more than the file had left
            rest += self.raw.read(size - len(rest)) or b""
        return rest[:size]


def iter_samples(fileobj: io.RawIOBase) -> Iterator[Sample]:
    """Yield the samples of a tar stream in order, each with a status.

    Members are grouped by WebDataset's key convention (webdataset's `base_plus_ext`: the key is the
    path up to the first dot of the file name). A key seen before in the shard, or an extension seen
    twice in a row for the same key, starts a `duplicate_key` sample. A stream that ends inside a
    member, inside a header or without an end-of-archive block yields a `truncated_tar` sample (after
    the complete ones), and nothing after it.

    We read the tar with `tarfile` ourselves instead of webdataset's `tar_file_iterator` because a
    corpus needs per-sample failures and the position of a truncation; webdataset's handlers can only
    skip or abandon a whole shard.
    """
    buffered = io.BufferedReader(fileobj, buffer_size=1 << 20)
    gzipped = buffered.peek(2)[:2] == b"\x1f\x8b"
    tap = _Tap(gzip.GzipFile(fileobj=buffered) if gzipped else buffered)
    seen: set[str] = set()
    current: Sample | None = None

    def finish(sample: Sample | None) -> Iterator[Sample]:
        if sample is None:
            return
        if sample.status == schema.OK and sample.key in seen:
            sample.status, sample.error = schema.DUPLICATE_KEY, f"key {sample.key!r} appears earlier in this shard"
        if sample.status == schema.OK and sample.image_member() is None:
            exts = ", ".join(sorted(sample.members)) or "none"
            sample.status, sample.error = schema.NO_IMAGE, f"no image member (members: {exts})"
        if sample.key is not None:
            seen.add(sample.key)
        yield sample

    try:
        stream = tarfile.open(fileobj=tap, mode="r|")
        for info in stream:
            if not info.isreg():
                continue
            key, ext = base_plus_ext(info.name)
            if key is None or ext is None or posix_basename(info.name).startswith("__"):
                continue
            ext = ext.lower()
            try:
                data = stream.extractfile(info).read()
            except (tarfile.TarError, EOFError, zlib.error) as exc:
                if current is not None and current.key != key:
                    yield from finish(current)
                yield Sample(key, status=schema.TRUNCATED, error=f"tar ends inside member {info.name!r}: {exc}")
                return
            stream.members = []  # tarfile keeps every TarInfo in stream mode; a shard can be huge
            if current is not None and (current.key != key or ext in current.members):
                yield from finish(current)
                current = None
            if current is None:
                current = Sample(key)
            current.members[ext] = data
            current.names[ext] = info.name
        # The loop ended: at an end-of-archive block, or (silently) at a truncated or corrupt header.
        block = tap.block_at(stream.offset)
        if block is not None and (len(block) < tarfile.BLOCKSIZE or block.count(0) != tarfile.BLOCKSIZE):
            yield from finish(current)
            what = "no end-of-archive block" if not block else "a truncated or corrupt header"
            yield Sample(None, status=schema.TRUNCATED, error=f"tar stops after byte {stream.offset}: {what}")
            return
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        if current is not None:
            yield from finish(current)
        yield Sample(None, status=schema.TRUNCATED, error=f"unreadable tar data: {exc}")
        return
    yield from finish(current)


def posix_basename(name: str) -> str:
    return name.rsplit("/", 1)[-1]


class ShardReadError(Exception):
    """A shard that cannot be read at all (missing, forbidden, or still failing after retries)."""


class SourceStage(Stage):
    """Reads shards (rows with a `shard` URL) and yields their samples in chunks of raw member bytes.

    After each shard comes a control row (`status` `_end`, `index` = the shard's sample count,
    `error` = JSON with the count and the retries it took) so the writer knows when a shard is
    complete; a shard that cannot be opened yields a `_shard_failed` row instead.

    Args:
        chunk_size: samples per output batch (bounds memory: a shard is never held whole).
        storage_options: fsspec options for opening shards.
    """

    name: ClassVar[str] = "read"

    def __init__(self, chunk_size: int = 64, storage_options: dict | None = None, num_cpus: float = 0.5) -> None:
        self.chunk_size = chunk_size
        self.storage_options = storage_options
        self.num_cpus = num_cpus

    def __call__(self, batch: Batch) -> Iterator[Batch]:
        for url in batch["shard"]:
            yield from self.read_shard(str(url))

    def read_shard(self, url: str) -> Iterator[Batch]:
        rows: list[tuple] = []
        retries_before = RetryCounter.count
        count = 0
        try:
            fs, path = get_fs(url, self.storage_options)
            reader = RetryingReader(fs, path)
        except Exception as exc:  # noqa: BLE001 - reported as a failed shard, the run goes on
            yield _rows_to_batch([_control(url, 0, schema.SHARD_FAILED, _describe(exc), retries_before)])
            return
        with reader:
            samples = iter_samples(reader)
            while True:
                try:
                    sample = next(samples)
                except StopIteration:
                    break
                except Exception as exc:  # noqa: BLE001 - I/O that failed after its retries
                    if rows:
                        yield _rows_to_batch(rows)
                    yield _rows_to_batch([_control(url, count, schema.SHARD_FAILED, _describe(exc), retries_before)])
                    return
                image = sample.image_member() if sample.status == schema.OK else None
                ext, data = image if image else (None, None)
                rows.append((url, count, sample.key, ext, data, sample.status, sample.error))
                count += 1
                if len(rows) >= self.chunk_size:
                    yield _rows_to_batch(rows)
                    rows = []
        rows.append(_control(url, count, schema.END_OF_SHARD, None, retries_before))
        yield _rows_to_batch(rows)


def _describe(exc: BaseException) -> str:
    kind = "transient error, retries exhausted" if is_transient(exc) else type(exc).__name__
    return f"{kind}: {exc}"


def _control(url: str, count: int, status: str, error: str | None, retries_before: int) -> tuple:
    info = {"samples": count, "retries": RetryCounter.count - retries_before}
    if error:
        info["error"] = error
    return (url, count, None, None, None, status, json.dumps(info))


def _rows_to_batch(rows: list[tuple]) -> Batch:
    columns = list(zip(*rows, strict=True))
    batch = {}
    for name, values in zip(ROW_COLUMNS, columns, strict=True):
        if name == "index":
            batch[name] = np.asarray(values, dtype=np.int64)
        else:
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
            batch[name] = arr
    return batch
