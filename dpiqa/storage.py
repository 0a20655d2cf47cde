"""Storage access through fsspec: filesystems, URLs, S3 listings and retried reads (every byte of I/O goes
through here; the shards of an input are listed and named in `dpiqa.engine.shards`)."""

from __future__ import annotations

import errno
import functools
import io
import logging
import os
import posixpath
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

import fsspec
from fsspec import AbstractFileSystem

log = logging.getLogger(__name__)

Location = str | tuple[str, dict] | tuple[str, AbstractFileSystem]
T = TypeVar("T")


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
    if _plain_local(url):
        # A local path is a path: fsspec's URL parsing would read `::` in a folder name as a chain of
        # filesystems (`a::b/x.tar` -> an unknown protocol), so it never sees one.
        return _LOCAL, _LOCAL._strip_protocol(os.path.expanduser(url))
    protocol = fsspec.core.split_protocol(url)[0] or "file"
    options = {**DEFAULT_STORAGE_OPTIONS.get(protocol, {}), **(storage_options or {})}
    if protocol in ("s3", "s3a") and "session" not in options:
        options["session"] = _s3_session()
        endpoint = options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url")
        if endpoint:
            check_endpoint(endpoint)
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path


_LOCAL = fsspec.filesystem("file")


def _plain_local(url: str) -> bool:
    """Whether `url` is a plain local path: no `protocol://`, and no fsspec chain (`simplecache::/p`) whose
    first link names a protocol fsspec knows."""
    if "://" in url or url.startswith(("data:", "file:", "local:")):
        return False
    return "::" not in url or url.split("::", 1)[0] not in fsspec.available_protocols()


@functools.lru_cache(maxsize=64)
def check_endpoint(endpoint: str, timeout: float = 5.0) -> None:
    """Fail at once, in one line, when nothing answers at an object store's endpoint: botocore would retry
    for over a minute and then print a long traceback. Checked once per endpoint and process.

    Raises:
        ValueError: the endpoint's host does not resolve or refuses the connection.
    """
    parsed = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise ValueError(
            f"cannot reach the object store at {endpoint} ({exc.strerror or exc}); is it running, "
            "and is the endpoint in --storage-options right?"
        ) from None


_S3_SESSIONS: dict[bool, Any] = {}


def _s3_session(listing: bool = False):
    """One aiobotocore session per process whose clients report each failed request attempt to
    `RETRIES` (botocore and s3fs retry them silently; the run manifest reports how many).

    `listing=True` gives a second one for `list_s3_keys` alone, whose responses keep their timestamps as the
    text S3 sent: botocore parses every listed key's `LastModified` into a datetime (dateutil), 40 % of the
    driver's CPU per key listed (0.26 -> 0.16 ms per key, measured against the loopback server), and a
    listing reads only the keys."""
    if listing not in _S3_SESSIONS:
        from aiobotocore.session import AioSession

        session = AioSession()
        session.register("needs-retry.s3", _count_failed_attempt)
        if listing:
            session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
            # the service models (~23 MB of JSON once parsed) are loaded once per process, not once per session
            session.register_component("data_loader", _s3_session().get_component("data_loader"))
        _S3_SESSIONS.setdefault(listing, session)  # two threads racing here keep the first
    return _S3_SESSIONS[listing]


def _listing_fs(fs: Any) -> Any:
    """`fs` (s3fs) with the listing session in place of ours, same credentials and endpoint; `fs` itself when
    its session is not ours (a caller's own session is left as it is)."""
    options = dict(fs.storage_options)
    if options.get("session") is not _s3_session():
        return fs
    return type(fs)(**{**options, "session": _s3_session(listing=True)})


def _count_failed_attempt(response: Any = None, caught_exception: BaseException | None = None, **_: Any) -> None:
    """botocore's `needs-retry` event fires after every attempt; this only observes (returns None, so
    botocore's own retry handler decides)."""
    status = response[0].status_code if response is not None else None
    if caught_exception is not None or (status is not None and (status >= 500 or status == 429)):
        RETRIES.add()


def to_url(fs: AbstractFileSystem, path: str) -> str:
    """The full URL of `path` on `fs` (`s3://bucket/key`, or a plain absolute local path)."""
    if is_local(fs):
        return os.path.abspath(path)
    return fs.unstrip_protocol(path)


def canonical(url: str, storage_options: dict | None = None) -> str:
    """One spelling per location, whatever form was typed: an absolute local path (`~` expanded,
    `file://` dropped, `..` resolved; symbolic links are kept), or `protocol://bucket/key`."""
    protocol = fsspec.core.split_protocol(url)[0]
    if protocol in (None, "file", "local"):
        return os.path.abspath(os.path.expanduser(fsspec.core.strip_protocol(url) if protocol else url))
    fs, path = get_fs(url, storage_options)
    return to_url(fs, posixpath.normpath(path))


def is_local(fs: AbstractFileSystem) -> bool:
    """Whether `fs` is the local file system."""
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def arrow_filesystem(fs: AbstractFileSystem):  # pyarrow.fs.PyFileSystem
    """A pyarrow filesystem over an fsspec one, for Ray Train's storage and checkpoints (pyarrow's own S3
    filesystem would ignore our storage options, e.g. a custom endpoint)."""
    import pyarrow.fs

    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def join(url: str, *parts: str) -> str:
    """Join path parts onto a URL or a local path."""
    return posixpath.join(url.rstrip("/"), *parts) if "://" in url else os.path.join(url, *parts)


def parent(url: str) -> str:
    """The folder of a URL or local path."""
    return posixpath.dirname(url.rstrip("/")) if "://" in url else os.path.dirname(url.rstrip(os.sep))


def inside(child: str, folder: str) -> bool:
    """Whether canonical location `child` is `folder` or lies below it."""
    folder = folder.rstrip("/")
    return child.rstrip("/") == folder or child.startswith(folder + "/")


# ---------------------------------------------------------------------------------------------
# Transient errors: retried with backoff before a read is declared failed.

_PERMANENT_ERRNOS = {
    errno.ENOENT,
    errno.EACCES,
    errno.EPERM,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.EINVAL,
    errno.EROFS,
    errno.ENAMETOOLONG,
}


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
    """The retries made in this process (ours, and botocore's failed attempts), counted from any thread.

    Each retry is reported once: `take()` returns what was counted since the previous `take()` and starts
    again from zero. Shard readers take at each shard's end and report it with the shard; the driver takes
    at a run's start (discarding what an earlier run in this process left) and at its end. A run's total is
    the sum of what was taken, so concurrent shards in one process never count the same retry twice.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def add(self, n: int = 1) -> None:
        with self._lock:
            self._count += n

    def take(self) -> int:
        with self._lock:
            n, self._count = self._count, 0
        return n


RETRIES = RetryCounter()


def retry(fn: Callable[[], T], what: str, attempts: int = 6, base_delay: float = 0.2) -> T:
    """Call `fn`, retrying transient I/O errors with exponential backoff and jitter."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts - 1 or not is_transient(exc):
                raise
            RETRIES.add()
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
        if S3_VERSION_MARK in self.path and is_s3(self.fs):
            f: Any = io.BufferedReader(S3KeyReader(self.fs, self.path), self.block_size)
        elif not is_local(self.fs):
            f = self.fs.open(self.path, "rb", block_size=self.block_size)
        else:
            f = self.fs.open(self.path, "rb")
        if self.pos:
            f.seek(self.pos)
        return f

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move to an absolute offset; the object is reopened there at the next read."""
        if whence != io.SEEK_SET:
            raise io.UnsupportedOperation("RetryingReader seeks to absolute offsets only")
        if offset != self.pos and self._f is not None:
            self._f.close()
            self._f = None
        self.pos = offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b: Any) -> int:
        def attempt() -> int:
            try:
                return self._f.readinto(b)
            except Exception as exc:
                if is_transient(exc):
                    try:
                        self._f.close()
                    except Exception:  # the old handle is broken; a new one follows
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


S3_VERSION_MARK = "?versionId="


def is_s3(fs: AbstractFileSystem) -> bool:
    return bool({"s3", "s3a"} & set(fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)))


class S3KeyReader(io.RawIOBase):
    """An S3 object read by its key exactly as listed, for a key holding `?versionId=`: s3fs's `split_path`
    takes that part of any path for an object version (and reads another key, or none), so these keys are
    read here with ranged GETs through s3fs's own `_fetch_range` (its retries and session included)."""

    def __init__(self, fs: AbstractFileSystem, path: str) -> None:
        super().__init__()
        self.fs = fs
        self.bucket, _, self.key = path.partition("/")
        head = fs.call_s3("head_object", Bucket=self.bucket, Key=self.key)
        self.size = int(head["ContentLength"])
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b: Any) -> int:
        from s3fs.core import _fetch_range

        end = min(self.pos + len(b), self.size)
        if end <= self.pos:
            return 0
        data = _fetch_range(self.fs, self.bucket, self.key, None, self.pos, end)
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)


def fs_join(path: str, *parts: str) -> str:
    """Join parts onto a path inside an fsspec filesystem (what `get_fs` returns: no protocol, always `/`)."""
    return "/".join([path.rstrip("/"), *parts])


PRINTABLE = [chr(c) for c in range(32, 128)]  # the characters a key range is split by (space to DEL)
_AFTER_DEL = "\x7f\U0010ffff"  # a prefix + this sorts after every key whose next character is ASCII
# A range below the folder splits after this many pages of its own: a split costs up to 97 requests (most
# answered empty, ~1-2 ms of driver CPU each), worth it for a range of thousands of keys, not for a few pages.
SPLIT_AFTER_PAGES = 3


def list_s3_keys(fs: Any, folder: str, threads: int = 16, page_size: int = 1000, sizes: bool = False) -> list:
    """Every object below `folder` (bucket/path) on S3, as `bucket/key` paths (as `fs.find` gives them; in no
    particular order; with `sizes`, `(path, size in bytes)` pairs), listed in key ranges side by side.

    S3 returns at most 1,000 keys per LIST request, and the pages of one prefix come one after another (each
    needs the last one's continuation token). So a page that comes back truncated splits what is left of its
    range by the next character after its prefix (S3 lists in UTF-8 byte order): with `P` the prefix and `c` the
    next character of the page's last key `L`, the keys `P + (a character before c)...` were all on that page,
    and the rest is `P + c` after `L`, `P + d` for each printable ASCII `d` after `c`, and the keys whose next
    character sorts after DEL (non-ASCII). Each of those ranges splits again in the same way once it has
    listed `SPLIT_AFTER_PAGES` pages of its own, so a folder of 10^6 names that share their first characters
    (`0000000.tar`, ...) is still listed many ranges at once, up to `threads` requests in flight. A range goes
    on page after page instead of splitting when its next character is a control or non-ASCII character, or
    when `threads` ranges are already in flight (a split costs up to 97 requests, most of them answered
    empty). A folder of up to `page_size` keys (most outputs' folders, small inputs) is one request. Why by
    hand: fsspec lists a prefix page after page in one loop.
    """
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    bucket, _, key = folder.partition("/")
    base = key.rstrip("/") + "/" if key else ""
    in_flight = 1

    def page(client: Any, prefix: str, start_after: str | None, token: str | None) -> dict:
        """One LIST request (up to `page_size` keys), retried."""
        kwargs: dict[str, Any] = {"Prefix": prefix, "MaxKeys": page_size}
        if token:
            kwargs["ContinuationToken"] = token
        elif start_after:
            kwargs["StartAfter"] = start_after
        return retry(lambda: client.call_s3("list_objects_v2", Bucket=bucket, **kwargs), f"list s3://{bucket}/{prefix}")

    # (prefix, start after this key, continuation token, pages listed in this range so far)
    Range = tuple[str, str | None, str | None, int]

    def one_page(client: Any, rng: Range) -> tuple[list, list[Range]]:
        """A range's next page: its keys (or key-size pairs), and the ranges that hold what is left."""
        prefix, start_after, token, pages = rng
        listed = page(client, prefix, start_after, token)
        contents = listed.get("Contents", ())
        keys = [o["Key"] for o in contents]
        found = [(o["Key"], int(o.get("Size") or 0)) for o in contents] if sizes else keys
        if not listed.get("IsTruncated"):
            return found, []
        nxt = keys[-1][len(prefix) : len(prefix) + 1] if keys else ""
        if nxt and " " <= nxt <= "\x7f" and pages >= SPLIT_AFTER_PAGES and in_flight < threads:
            rest: list[Range] = [(prefix + nxt, keys[-1], None, 0)]
            rest += [(prefix + d, None, None, 0) for d in PRINTABLE if d > nxt]
            rest.append((prefix, prefix + _AFTER_DEL, None, 0))
            return found, rest
        return found, [(prefix, start_after, listed["NextContinuationToken"], pages + 1)]

    keys, todo = one_page(fs, (base, None, None, SPLIT_AFTER_PAGES))  # the folder splits at its first page
    parts = [keys]
    if todo:
        many = _listing_fs(fs)  # for the ranges: its session leaves timestamps unparsed
        with ThreadPoolExecutor(threads) as pool:
            running = {pool.submit(one_page, many, rng) for rng in todo}
            while running:
                in_flight = len(running)
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    keys, rest = future.result()
                    parts.append(keys)
                    running |= {pool.submit(one_page, many, rng) for rng in rest}
    if sizes:
        return [(f"{bucket}/{k}", n) for part in parts for k, n in part if not k.endswith("/")]
    return [f"{bucket}/{k}" for part in parts for k in part if not k.endswith("/")]
