"""Storage access through fsspec: filesystems, shard lists, shard names and retried reads."""

from __future__ import annotations

import errno
import io
import logging
import os
import posixpath
import random
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import braceexpand
import fsspec
from fsspec import AbstractFileSystem

log = logging.getLogger(__name__)

Location = str | tuple[str, dict] | tuple[str, AbstractFileSystem]
T = TypeVar("T")

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")

# Default storage options per protocol. s3fs already retries throttling (503 SlowDown) and dropped
# connections on each request; botocore's "adaptive" mode adds client-side rate limiting on top.
DEFAULT_STORAGE_OPTIONS: dict[str, dict] = {
    "s3": {"config_kwargs": {"retries": {"max_attempts": 8, "mode": "adaptive"}}},
}


def get_fs(location: Location, storage_options: dict | None = None) -> tuple[AbstractFileSystem, str]:
    """Resolve a location to `(filesystem, path)`, as datatrove's `get_datafolder` does.

    Args:
        location: a URL or local path, `(url, storage_options)` or `(url, filesystem)`.
        storage_options: extra options for the filesystem when `location` is a plain URL.
    """
    if isinstance(location, tuple):
        url, extra = location
        if isinstance(extra, AbstractFileSystem):
            return extra, extra._strip_protocol(url)
        storage_options = {**(storage_options or {}), **extra}
    else:
        url = location
    protocol = fsspec.core.split_protocol(url)[0] or "file"
    options = {**DEFAULT_STORAGE_OPTIONS.get(protocol, {}), **(storage_options or {})}
    if protocol in ("s3", "s3a") and "session" not in options:
        options["session"] = _s3_session()
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path


_S3_SESSION = None


def _s3_session():
    """One aiobotocore session per process whose clients report each failed request attempt to
    `RetryCounter` (botocore and s3fs retry them silently; the run manifest reports how many)."""
    global _S3_SESSION
    if _S3_SESSION is None:
        from aiobotocore.session import AioSession

        session = AioSession()
        session.register("needs-retry.s3", _count_failed_attempt)
        _S3_SESSION = session
    return _S3_SESSION


def _count_failed_attempt(response: Any = None, caught_exception: BaseException | None = None, **_: Any) -> None:
    """botocore's `needs-retry` event fires after every attempt; this only observes (returns None, so
    botocore's own retry handler decides)."""
    status = response[0].status_code if response is not None else None
    if caught_exception is not None or (status is not None and (status >= 500 or status == 429)):
        RetryCounter.count += 1


def to_url(fs: AbstractFileSystem, path: str) -> str:
    """The full URL of `path` on `fs` (`s3://bucket/key`, or a plain local path)."""
    if _is_local(fs):
        return path
    return fs.unstrip_protocol(path)


def _is_local(fs: AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def join(url: str, *parts: str) -> str:
    """Join path parts onto a URL or a local path."""
    return posixpath.join(url.rstrip("/"), *parts) if "://" in url else os.path.join(url, *parts)


def expand_shards(spec: str, storage_options: dict | None = None) -> list[str]:
    """Expand a shard specification into a sorted list of shard URLs.

    Args:
        spec: one of
            - a brace pattern, `s3://b/p/{00000..00099}.tar` (shards it names that do not exist are kept:
              the run reports them as failed shards instead of silently scoring less);
            - a glob, `s3://b/p/*.tar`;
            - a prefix or folder, `s3://b/p/` (every `.tar`, `.tar.gz` or `.tgz` below it);
            - a text file listing one URL per line (`#` starts a comment).
        storage_options: fsspec options for the listing.

    Raises:
        ValueError: when the specification names no shard.
    """
    if "{" in spec and ".." in spec:
        urls = list(braceexpand.braceexpand(spec))
    else:
        fs, path = get_fs(spec, storage_options)
        if any(ch in path for ch in "*?["):
            urls = [to_url(fs, p) for p in fs.glob(path)]
        elif fs.isdir(path):
            urls = [to_url(fs, p) for p in fs.find(path) if p.endswith(SHARD_SUFFIXES)]
        elif fs.isfile(path) and not path.endswith(SHARD_SUFFIXES):
            with fs.open(path, "rt") as f:
                urls = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        elif fs.isfile(path):
            urls = [to_url(fs, path)]
        else:
            raise ValueError(f"{spec}: no such shard, folder, prefix or URL list")
    urls = sorted(set(urls))
    if not urls:
        raise ValueError(f"{spec}: names no shard (expected .tar files, a brace pattern or a URL list)")
    return urls


def shard_stem(url: str) -> str:
    """`s3://b/p/00012.tar` -> `00012`."""
    base = posixpath.basename(url.rstrip("/"))
    for suffix in SHARD_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def shard_names(urls: Iterable[str]) -> dict[str, str]:
    """Deterministic, unique output names for shard URLs: the path below their common folder.

    `s3://b/p/a/00001.tar` and `s3://b/p/b/00001.tar` become `a__00001` and `b__00001`; a flat set of
    shards keeps its stems (`00001`). The name depends only on the shard list, never on run order.
    """
    urls = list(urls)
    stripped = [posixpath.normpath(u.split("://", 1)[-1]) for u in urls]
    dirs = [posixpath.dirname(s) for s in stripped]
    common = posixpath.commonpath(dirs) if len(set(dirs)) > 1 else dirs[0] if dirs else ""
    names = {}
    for url, s in zip(urls, stripped, strict=True):
        rel = posixpath.relpath(s, common) if common else s.lstrip("/")
        rel = posixpath.join(posixpath.dirname(rel), shard_stem(rel))
        names[url] = rel.replace("/", "__")
    if len(set(names.values())) != len(names):
        raise ValueError("shard URLs map to clashing output names; list shards from one folder tree")
    return names


# ---------------------------------------------------------------------------------------------
# Transient errors: retried with backoff before a read is declared failed.

_PERMANENT_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EINVAL}


def is_transient(exc: BaseException) -> bool:
    """Whether an I/O error is worth retrying (throttling, dropped connections, timeouts)."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    name = type(exc).__name__
    if any(s in name for s in ("Timeout", "Connection", "IncompleteRead", "ClientPayload", "ServerDisconnected")):
        return True
    if isinstance(exc, OSError):
        # s3fs maps 503 SlowDown to EBUSY and 5xx answers to generic OSErrors without errno.
        return exc.errno not in _PERMANENT_ERRNOS
    return False


class RetryCounter:
    """Counts the retries this process made (reported per shard, summed in the run manifest)."""

    count = 0


def retry(fn: Callable[[], T], what: str, attempts: int = 6, base_delay: float = 0.2) -> T:
    """Call `fn`, retrying transient I/O errors with exponential backoff and jitter."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts - 1 or not is_transient(exc):
                raise
            RetryCounter.count += 1
            delay = base_delay * 2**attempt * (0.5 + random.random())
            log.warning("%s: %s (%s), retry %d in %.1fs", what, type(exc).__name__, exc, attempt + 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


class RetryingReader(io.RawIOBase):
    """A sequential reader that survives dropped connections: on a transient error it reopens the
    object and seeks back to where it was. fsspec files retry single requests; this covers a stream
    that breaks between them, so a shard is not abandoned (or re-read, duplicating rows) half-way."""

    def __init__(self, fs: AbstractFileSystem, path: str, attempts: int = 6, block_size: int = 8 << 20) -> None:
        super().__init__()
        self.fs, self.path, self.attempts, self.block_size = fs, path, attempts, block_size
        self.pos = 0
        self._f: Any = retry(self._open, f"open {path}", attempts)

    def _open(self) -> Any:
        f = self.fs.open(self.path, "rb", block_size=self.block_size) if not _is_local(self.fs) else self.fs.open(
            self.path, "rb"
        )
        if self.pos:
            f.seek(self.pos)
        return f

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        def attempt() -> int:
            try:
                return self._f.readinto(b)
            except Exception as exc:
                if is_transient(exc):
                    try:
                        self._f.close()
                    except Exception:  # noqa: BLE001 - the old handle is broken; a new one follows
                        pass
                    self._f = None
                raise

        def reopen_then_read() -> int:
            if self._f is None:
                self._f = self._open()
            return attempt()

        n = retry(reopen_then_read, f"read {self.path} at byte {self.pos}", self.attempts)
        self.pos += n
        return n

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
        super().close()
