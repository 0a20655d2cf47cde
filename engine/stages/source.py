"""The shard reader: streams a WebDataset tar's members and groups them into samples, one row each."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO, ClassVar

import numpy as np

from dpiqa.engine import schema
from dpiqa.engine.shards.tarstream import Damage, NotATarError, iter_members, shown
from dpiqa.engine.stages.base import Batch, Stage
from dpiqa.storage import RETRIES, RetryingReader, get_fs, is_transient

ROW_COLUMNS = ("shard", "index", "key", "ext", "data", "status", "error")

# WebDataset's key convention, as `webdataset.tariterators.base_plus_ext` states it: the key is the
# member path up to the first dot of its file name, the extension is the rest. Repeated here because
# importing webdataset imports torch (~600 MB), which the shard reader of `audit`/`filter` must not pay.
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
# webdataset's `tar_file_iterator(skip_meta=...)` default: members it never reads
_SKIP_META = re.compile(r"__[^/]*__($|/)")


def base_plus_ext(path: str) -> tuple[str | None, str | None]:
    """`a/b.seg.jpg` -> `("a/b", "seg.jpg")`; `(None, None)` for a name without an extension."""
    match = _KEY_EXT.match(path)
    return (match.group(1), match.group(2)) if match else (None, None)


def image_candidates(exts: list[str]) -> list[str]:
    """The extensions of a sample's image members. An extension that is an image format by itself
    (`jpg`) wins; otherwise one whose last part is (`seg.png`, or `5_normal_000.jpg` where a file stem
    holds a dot), as webdataset's decoders recognise images by the last extension."""
    whole = [e for e in exts if e in schema.IMAGE_EXTENSIONS]
    return whole or [e for e in exts if e.rsplit(".", 1)[-1] in schema.IMAGE_EXTENSIONS]


@dataclass
class Sample:
    """One WebDataset sample: the members sharing a key (`__key__`), by lower-case extension.

    Args:
        key: the key as text (bytes of the stored name that are not UTF-8 shown as `\\xNN`).
        members: lower-case extension -> bytes (None for a special member: a link, FIFO or device).
        status, error: the row's status and message.
        names: lower-case extension -> member name as stored (surrogate escapes for non-UTF-8 bytes).
        notes: lower-case extension -> what a special member is.
        image_ext: the extension of the member that is scored (set when the sample is finished).
    """

    key: str | None
    members: dict[str, bytes | None] = field(default_factory=dict)
    status: str = schema.OK
    error: str | None = None
    names: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    image_ext: str | None = None
    raw_key: str | None = None

    def image_member(self) -> tuple[str, bytes] | None:
        if self.image_ext is None or self.members.get(self.image_ext) is None:
            return None
        return self.image_ext, self.members[self.image_ext]

    def check(self, seen: set[str]) -> None:
        """Give the finished sample its status: a key seen before, no image, several images, or a
        special member as its image."""
        if self.status != schema.OK:
            return
        if self.raw_key in seen:
            self.status, self.error = schema.DUPLICATE_KEY, f"key {self.key!r} appears earlier in this shard"
            return
        candidates = image_candidates(list(self.members))
        if not candidates:
            exts = ", ".join(sorted(shown(e) for e in self.members)) or "none"
            self.status, self.error = schema.NO_IMAGE, f"no image member (members: {exts})"
        elif len(candidates) > 1:
            names = ", ".join(repr(shown(self.names[e])) for e in candidates)
            why = (
                "a WebDataset key ends at the first dot of the file name, so these files share one key; "
                "name files without dots in the stem to score each"
                if any("." in e for e in candidates)
                else "one image per sample is scored; give each its own key"
            )
            self.status, self.error = schema.SEVERAL_IMAGES, f"{len(candidates)} image members ({names}): {why}"
        elif candidates[0] in self.notes:
            ext = candidates[0]
            self.status, self.error = schema.SPECIAL_MEMBER, f"{shown(self.names[ext])}: {self.notes[ext]}"
        else:
            self.image_ext = candidates[0]


def iter_samples(fileobj: BinaryIO, reopen: Callable[[], BinaryIO] | None = None) -> Iterator[Sample]:
    """Yield the samples of a tar stream in order, each with a status.

    Members are grouped by WebDataset's key convention (webdataset's `base_plus_ext`: the key is the
    path up to the first dot of the file name). A key seen before in the shard, or an extension seen
    twice in a row for the same key, starts a `duplicate_key` sample. A stream that ends inside a
    member, inside a header or without an end-of-archive block yields a `truncated_tar` sample (after
    the complete ones), and a damaged compressed stream or trailing bytes a `corrupt_archive` one;
    nothing follows them. Hard links are read as their target's bytes (`dpiqa.engine.shards.tarstream`).

    We read the tar with `tarfile` ourselves instead of webdataset's `tar_file_iterator` because a
    corpus needs per-sample failures and the position of a truncation; webdataset's handlers can only
    skip or abandon a whole shard.

    Args:
        fileobj: the shard's bytes.
        reopen: opens them again from the start (to read a hard link's target that is no longer held).

    Raises:
        engine.shards.tarstream.NotATarError: the bytes are no tar archive at all.
    """
    seen: set[str] = set()
    current: Sample | None = None

    def finish(sample: Sample | None) -> Iterator[Sample]:
        if sample is None:
            return
        sample.check(seen)
        if sample.raw_key is not None:
            seen.add(sample.raw_key)
        yield sample

    for item in iter_members(fileobj, reopen):
        if isinstance(item, Damage):
            key = base_plus_ext(item.name)[0] if item.name else None
            if current is not None and (key is None or current.raw_key != key):
                yield from finish(current)
            yield Sample(shown(key) if key else None, status=item.status, error=item.message, raw_key=key)
            return
        key, ext = base_plus_ext(item.name)
        if key is None or ext is None or is_metadata(item.name):
            continue
        ext = ext.lower()
        if current is not None and (current.raw_key != key or ext in current.members):
            yield from finish(current)
            current = None
        if current is None:
            current = Sample(shown(key), raw_key=key)
        current.members[ext] = item.data
        current.names[ext] = item.name
        if item.note:
            current.notes[ext] = item.note
    yield from finish(current)


def is_metadata(name: str) -> bool:
    """Whether webdataset's `tar_file_iterator` skips a member as metadata: a top-level `__name__`, or a
    name in a top-level `__name__/` folder (its `meta_prefix`/`meta_suffix` and `skip_meta` defaults). A
    file that merely starts with `__` (`__0001.jpg`, `x/__y.jpg`) is a sample like any other."""
    return ("/" not in name and name.startswith("__") and name.endswith("__")) or _SKIP_META.match(name) is not None


@contextmanager
def shard_samples(url: str, storage_options: dict | None = None) -> Iterator[Iterator[Sample]]:
    """Open a shard (local path or fsspec URL) for `iter_samples`: read through `RetryingReader`, which
    survives dropped connections, and reopened for a hard link whose target must be read again.

    Raises:
        OSError: the shard cannot be opened (after retries).
        engine.shards.tarstream.NotATarError: (while iterating) its bytes are no tar archive.
    """
    fs, path = get_fs(url, storage_options)
    with RetryingReader(fs, path) as reader:
        yield iter_samples(reader, reopen=lambda: RetryingReader(fs, path))


def source_identity(url: str, storage_options: dict | None = None) -> dict:
    """What a shard is now, to tell later whether it changed: its size, and its ETag (object stores) or
    modification time (file systems); `{}` when the store says nothing."""
    fs, path = get_fs(url, storage_options)
    try:
        info = fs.info(path)
    except Exception:  # the read itself reports an unreadable shard
        return {}
    out = {"size": info.get("size")}
    etag = info.get("ETag") or info.get("etag")
    if etag:
        out["etag"] = str(etag).strip('"')
    else:
        mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
        if mtime is not None:
            out["mtime"] = mtime.isoformat() if hasattr(mtime, "isoformat") else float(mtime)
    return out


class SourceStage(Stage):
    """Reads shards (rows with a `shard` URL) and yields their samples in chunks of raw member bytes.

    After each shard comes a control row (`status` `_end`, `index` = the shard's sample count,
    `error` = JSON with the count and the retries it took) so the writer knows when a shard is
    complete; a shard that cannot be opened yields a `_shard_failed` row instead.

    Args:
        chunk_size: samples per output batch at most (bounds memory: a shard is never held whole).
        storage_options: fsspec options for opening shards.
        chunk_bytes: member bytes per output batch at most (a chunk ends early at this many bytes, so a shard of
            large images holds no more memory than one of small ones; a single larger sample is a chunk alone).
    """

    name: ClassVar[str] = "read"

    def __init__(
        self,
        chunk_size: int = 64,
        storage_options: dict | None = None,
        num_cpus: float = 0.5,
        chunk_bytes: int = 64 << 20,
    ) -> None:
        self.chunk_size = chunk_size
        self.storage_options = storage_options
        self.num_cpus = num_cpus
        self.chunk_bytes = chunk_bytes

    def __call__(self, batch: Batch) -> Iterator[Batch]:
        for url in batch["shard"]:
            yield from self.read_shard(str(url))

    def read_shard(self, url: str) -> Iterator[Batch]:
        rows: list[tuple] = []
        count = held = 0
        failure: str | None = None
        try:
            with shard_samples(url, self.storage_options) as samples:
                for sample in samples:
                    image = sample.image_member() if sample.status == schema.OK else None
                    ext, data = image if image else (None, None)
                    rows.append((url, count, sample.key, ext, data, sample.status, sample.error))
                    count += 1
                    held += len(data) if data else 0
                    if len(rows) >= self.chunk_size or held >= self.chunk_bytes:
                        yield _rows_to_batch(rows)
                        rows, held = [], 0
        except Exception as exc:  # not a tar, or I/O failing after its retries: a failed shard
            failure = _describe(exc)
        if failure is not None:
            rows.append(_control(url, count, schema.SHARD_FAILED, failure))
        else:
            rows.append(_control(url, count, schema.END_OF_SHARD, None))
        yield _rows_to_batch(rows)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, NotATarError):
        return str(exc)
    kind = "transient error, retries exhausted" if is_transient(exc) else type(exc).__name__
    return f"{kind}: {exc}"


def _control(url: str, count: int, status: str, error: str | None) -> tuple:
    # this process's retries since the last shard ended (storage.RetryCounter.take): each reported once
    info = {"samples": count, "retries": RETRIES.take()}
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
