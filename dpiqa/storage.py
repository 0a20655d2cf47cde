"""Storage access through fsspec: filesystems, shard lists, shard names and retried reads."""

from __future__ import annotations

import codecs
import errno
import functools
import hashlib
import io
import logging
import os
import posixpath
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import braceexpand
import fsspec
from fsspec import AbstractFileSystem

from dpiqa.errors import UsageError

log = logging.getLogger(__name__)

Location = str | tuple[str, dict] | tuple[str, AbstractFileSystem]
T = TypeVar("T")

# Tar shards, compressed or not (the reader tells the compression by the bytes, not by the name).
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz", ".tar.zst", ".tzst")
# the suffixes as the one-line errors name them
SHARD_SUFFIX_NAMES = ".tar, .tar.gz, .tgz, .tar.bz2, .tar.xz or .tar.zst"

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


def is_shard_name(path: str) -> bool:
    """Whether a file name has a tar shard's suffix (`.tar`, `.tar.gz`, `.tgz`, `.tar.bz2`, `.tar.xz`,
    `.tar.zst`, ...; any case)."""
    return path.lower().endswith(SHARD_SUFFIXES)


@dataclass
class ShardList:
    """The shards an input specification names.

    Args:
        urls: canonical shard URLs, sorted.
        names: URL -> output name: the shard's path below `root` without its suffix, `/` as `__`
            (`root/2026-11-27/00000.tar` -> `2026-11-27__00000`). A function of the shard's own place
            below what the user named, so names stay the same as the tree grows.
        root: the folder the user named (a folder or prefix, or the fixed part of a glob or brace
            pattern); None for a single shard or a URL list, whose names are taken below their common folder.
        missing: shards a brace pattern or URL list names that do not exist (left out of `urls`).
    """

    urls: list[str]
    names: dict[str, str]
    root: str | None
    missing: list[str] = field(default_factory=list)


def list_shards(spec: str, storage_options: dict | None = None, skip_missing: bool = False) -> ShardList:
    """Expand a shard specification into its shards.

    Args:
        spec: one of (tried in this order)
            - an existing folder or prefix, `s3://b/p/` (every tar shard below it, any depth);
            - an existing shard, `s3://b/p/00000.tar` (used literally even if it holds `[`, `*` or `{`);
            - an existing text file listing one shard per line (blank lines and lines starting with `#`
              are skipped; a relative path is relative to the list's folder);
            - a brace pattern, `s3://b/p/{00000..00099}.tar` (globs may follow expansion);
            - a glob, `s3://b/p/*.tar` (only tar shards among its matches are taken).
        storage_options: fsspec options for the listing.
        skip_missing: score the shards that exist when a brace pattern or list names some that do not;
            without it they are refused.

    Raises:
        ValueError: the specification names no shard, names files that are no tar shards, or names
            shards that do not exist (without `skip_missing`); the message is one line.
    """
    if not spec.strip():
        raise UsageError(
            "the input is an empty string (an unset shell variable?); name shards, a folder, a pattern or a list"
        )
    fs, path = get_fs(spec, storage_options)
    root: str | None = None
    explicit = False  # every URL was named one by one (checked for existence)
    unreadable: list[str] = []
    if _exists(fs, path):
        if fs.isdir(path):
            root = to_url(fs, path.rstrip("/"))
            if is_local(fs):
                found, unreadable = _find_local(path)
            else:
                found = list_s3_keys(fs, path) if _is_s3(fs) else fs.find(path)
            urls = [to_url(fs, p) for p in found if is_shard_name(p)]
            if unreadable and not skip_missing:
                raise ValueError(
                    f"{spec}: {len(unreadable):,} folder(s) below it cannot be read, so the shards in them would "
                    f"be left out (first: {unreadable[0]}); make them readable, or pass --skip-missing to score "
                    "the shards that can be read"
                )
            if unreadable:
                log.warning(
                    "%s: %d folder(s) below it cannot be read; their shards are skipped (first: %s)",
                    spec,
                    len(unreadable),
                    unreadable[0],
                )
            if not urls:
                raise ValueError(f"{spec}: a folder with no tar shard below it (.tar, .tar.gz, .tgz, .tar.zst, ...)")
        elif is_shard_name(path):
            urls = [to_url(fs, path)]
        else:
            urls, explicit = _read_list(fs, path, spec, storage_options), True
    elif "{" in spec and "}" in spec:
        urls, explicit = [], True
        for item in braceexpand.braceexpand(spec):
            urls.extend(_glob(item, storage_options) if _magic(item) else [canonical(item, storage_options)])
        root = _fixed_folder(spec, spec.index("{"), storage_options)
    elif _magic(path):
        urls = _glob(spec, storage_options)
        root = _fixed_folder(spec, min(spec.index(c) for c in "*?[" if c in spec), storage_options)
        if not urls:
            raise ValueError(f"{spec}: the pattern matches no tar shard")
    else:
        raise ValueError(f"{spec}: no such shard, folder, prefix or URL list")
    urls = sorted(set(urls))
    if not urls:
        raise ValueError(f"{spec}: names no shard")
    not_shards = [u for u in urls if not is_shard_name(u)]
    if not_shards:
        raise ValueError(
            f"{spec}: names {len(not_shards)} file(s) that are no tar shards (first: {not_shards[0]}); "
            f"a shard's name ends in {SHARD_SUFFIX_NAMES}"
        )
    missing = _missing(urls, storage_options) if explicit else []
    if missing and not skip_missing:
        first = ", ".join(missing[:3])
        raise ValueError(
            f"{spec}: {len(missing):,} of {len(urls):,} shards do not exist (first: {first}); "
            "pass --skip-missing to score the ones that do"
        )
    if missing:
        log.warning(
            "%s: %d of %d shards do not exist and are skipped (first: %s)", spec, len(missing), len(urls), missing[0]
        )
        gone = set(missing)
        urls = [u for u in urls if u not in gone]
        if not urls:
            raise ValueError(f"{spec}: none of its {len(missing)} shards exists")
    return ShardList(urls, shard_names(urls, root), root, missing)


def refuse_overlap(shards: ShardList, output: str, storage_options: dict | None = None) -> None:
    """Refuse an output inside the input folder (a later run over the input would take the outputs for
    input), an input inside the output, and an output that is one of the shards.

    Raises:
        ValueError: one line naming both; or an object-store output in a bucket that does not exist.
    """
    refuse_missing_bucket(output, storage_options)
    out = canonical(output, storage_options)
    if shards.root is not None and inside(out, shards.root):
        raise UsageError(
            f"--output {output} lies inside the input folder {shards.root}; choose an output outside the input tree"
        )
    if shards.root is not None and inside(shards.root, out):
        raise ValueError(
            f"the input folder {shards.root} lies inside --output {output}; choose an output outside the input tree"
        )
    if out in set(shards.urls):
        raise ValueError(f"--output {output} is one of the input shards")


def refuse_missing_bucket(output: str, storage_options: dict | None = None) -> None:
    """Refuse an `s3://` output in a bucket that does not exist: s3fs would create it on the first write,
    in whatever region and with whatever policy its defaults give, under a name that may be a typo.

    Raises:
        ValueError: one line naming the bucket.
    """
    fs, path = get_fs(output, storage_options)
    if not _is_s3(fs):
        return
    bucket = path.split("/", 1)[0]
    try:
        fs.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError:
        raise ValueError(
            f"--output {output}: the bucket {bucket!r} does not exist; create it first (dpiqa does not create buckets)"
        ) from None
    except PermissionError:
        pass  # it exists; whether this user may write there shows at the first write


def _exists(fs: AbstractFileSystem, path: str) -> bool:
    try:
        return bool(path) and fs.exists(path)
    except (ValueError, OSError):  # a pattern that is no valid object name
        return False


def _find_local(folder: str) -> tuple[list[str], list[str]]:
    """Every file below a local folder, following symbolic links to folders (as `find -L` does: a link
    is how a catalog often gathers its parts), and the folders that could not be read, each with why.

    Written with `os.walk` rather than fsspec's `find`, which neither follows a link to a folder nor says
    when a folder cannot be listed: it leaves both out silently. A link back up the tree (or a second link
    to a folder already walked) is walked once.
    """
    files: list[str] = []
    unreadable: list[str] = []
    walked: set[str] = set()

    def failed(exc: OSError) -> None:
        unreadable.append(f"{exc.filename}: {exc.strerror or exc}")

    for here, dirs, names in os.walk(folder, onerror=failed, followlinks=True):
        real = os.path.realpath(here)
        if real in walked:
            dirs[:] = []
            continue
        walked.add(real)
        files.extend(os.path.join(here, n) for n in names)
    return sorted(files), sorted(unreadable)


def _magic(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _glob(spec: str, storage_options: dict | None) -> list[str]:
    fs, path = get_fs(spec, storage_options)
    return [to_url(fs, p) for p in fs.glob(path) if is_shard_name(p) and not fs.isdir(p)]


def _fixed_folder(spec: str, cut: int, storage_options: dict | None) -> str | None:
    """The folder holding the fixed part of a pattern (`s3://b/p/x-{0..9}.tar` -> `s3://b/p`)."""
    head = spec[:cut]
    folder = head.rstrip("/") if head.endswith("/") else parent(head)
    if not folder or folder.endswith(":") or folder.endswith("://"):
        return None
    return canonical(folder, storage_options)


def _read_list(fs: AbstractFileSystem, path: str, spec: str, storage_options: dict | None) -> list[str]:
    """The shards a text file lists: one per line, `#` comment lines and blank lines skipped, relative
    paths taken relative to the list's own folder (so a list travels with its shards)."""
    with fs.open(path, "rb") as f:
        raw = f.read(64 << 20)
    # Editors on Windows save a list as UTF-8 with a byte-order mark (Notepad's "UTF-8 with BOM") or as
    # UTF-16 ("Unicode"), with CRLF line ends: the mark would otherwise glue onto the first shard's name.
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            raw = raw.decode("utf-16").encode("utf-8")
        except UnicodeDecodeError:
            pass
    if b"\x00" in raw[:8192]:
        raise ValueError(f"{spec}: neither a tar shard (.tar, .tar.gz, ...) nor a text list of shard URLs")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(
            f"{spec}: neither a tar shard (.tar, .tar.gz, ...) nor a UTF-8 text list of shard URLs"
        ) from None
    here = parent(to_url(fs, path))
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    # checked before any line is read as a URL: a text that is no list (a README, a CSV) would otherwise end in
    # fsspec's "Protocol not known: <the line>", which names neither the file nor the line
    bad = [(n, line) for n, line in lines if not is_shard_name(line)]
    if bad:
        n, line = bad[0]
        shown = line if len(line) <= 80 else line[:77] + "..."
        raise ValueError(
            f"{spec}: a shard list with {len(bad):,} line(s) that name no tar shard (first, line {n}: {shown!r}); "
            f"each line holds one {SHARD_SUFFIX_NAMES} URL or path"
        )
    urls = []
    for _, line in lines:
        absolute = "://" in line or os.path.isabs(line) or line.startswith("~")
        urls.append(canonical(line if absolute else join(here, line), storage_options))
    return urls


def sizes(urls: list[str], storage_options: dict | None = None) -> dict[str, int | None]:
    """Each URL's size in bytes, None where it does not exist: one listing per folder (not one request per
    shard, which on an object store would be 10^5 round trips)."""
    by_folder: dict[str, list[str]] = {}
    for url in urls:
        by_folder.setdefault(parent(url), []).append(url)
    out: dict[str, int | None] = {}
    for folder, members in by_folder.items():
        fs, path = get_fs(folder, storage_options)
        try:
            present = {to_url(fs, e["name"]): int(e.get("size") or 0) for e in fs.ls(path, detail=True)}
        except (FileNotFoundError, NotADirectoryError):
            present = {}
        out.update({u: present.get(u) for u in members})
    return out


def _missing(urls: list[str], storage_options: dict | None) -> list[str]:
    """The URLs that do not exist (`sizes`)."""
    return sorted(u for u, size in sizes(urls, storage_options).items() if size is None)


def shard_stem(url: str) -> str:
    """`s3://b/p/00012.tar` -> `00012` (any shard suffix, any case)."""
    base = posixpath.basename(url.rstrip("/"))
    lower = base.lower()
    for suffix in SHARD_SUFFIXES:
        if lower.endswith(suffix):
            return base[: -len(suffix)]
    return base


# The longest output name, in bytes: an output file is `NAME.parquet` (the local writer's temporary file
# `.NAME.parquet.xxxxxxxx.tmp`), and a file name holds at most 255 bytes on ext4, XFS, APFS and NTFS
# (an S3 key 1,024 in all). Checked before anything is scored, so a name never fails at the write.
MAX_NAME_BYTES = 200
_HASH_CHARS = 16


def fit_name(name: str) -> str:
    """An output name that the output's filesystem can hold: `name` itself when it has at most
    `MAX_NAME_BYTES` bytes; else its start and its end (the shard's own stem) around a hash of the whole
    (`2026-11-27__aaaa...-3f9c0e1d2b7a4c65-...zzzz__00001`), the same on every run and for no other name.
    `?versionId=` (an S3 key's own characters, which s3fs would read as a version) is written `_versionId=`.
    """
    # an object store output would read `?versionId=` in the name as a version (s3fs), and write elsewhere
    name = name.replace(_VERSION_MARK, "_versionId=")
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:_HASH_CHARS]
    keep = (MAX_NAME_BYTES - _HASH_CHARS - 2) // 2
    # cut on character boundaries: a name's bytes are UTF-8 (or surrogate-escaped bytes that were not)
    head = raw[:keep].decode("utf-8", "ignore")
    tail = raw[-keep:].decode("utf-8", "ignore")
    return f"{head}-{digest}-{tail}"


def shard_names(urls: Iterable[str], root: str | None = None) -> dict[str, str]:
    """Deterministic, unique output names: each shard's path below `root` (or, without one, below the
    shards' common folder), without its suffix, `/` written as `__`.

    `root/a/00001.tar` and `root/b/00001.tar` become `a__00001` and `b__00001`; shards directly in `root`
    keep their stems (`00001`). A name longer than a file name may be (`MAX_NAME_BYTES`) is shortened
    around a hash of the whole (`fit_name`).

    Raises:
        ValueError: two shards would get one name (`x.tar` beside `x.tar.gz`).
    """
    urls = list(urls)
    stripped = [posixpath.normpath(u.split("://", 1)[-1]) for u in urls]
    if root is not None:
        common = posixpath.normpath(root.split("://", 1)[-1])
    else:
        dirs = [posixpath.dirname(s) for s in stripped]
        common = posixpath.commonpath(dirs) if len(set(dirs)) > 1 else dirs[0] if dirs else ""
    names = {}
    for url, s in zip(urls, stripped, strict=True):
        rel = posixpath.relpath(s, common) if common else s.lstrip("/")
        rel = posixpath.join(posixpath.dirname(rel), shard_stem(rel))
        names[url] = fit_name(rel.replace("/", "__"))
    if len(set(names.values())) != len(names):
        seen: dict[str, str] = {}
        for url, name in names.items():
            if name in seen:
                raise ValueError(
                    f"shards {seen[name]} and {url} would both be written as {name!r}; "
                    "keep one of them out of the input"
                )
            seen[name] = url
    return names


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
        if _VERSION_MARK in self.path and _is_s3(self.fs):
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


_VERSION_MARK = "?versionId="


def _is_s3(fs: AbstractFileSystem) -> bool:
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


PRINTABLE = [chr(c) for c in range(32, 128)]  # the prefixes an S3 listing is split into (space to DEL)


def list_s3_keys(fs: Any, folder: str, threads: int = 16) -> list[str]:
    """Every object below `folder` (bucket/path) on S3, as `bucket/key` paths (as `fs.find` gives them), listed
    concurrently: S3 returns 1,000 keys per request, one
    request after another within a prefix, so the keys are listed as 96 prefixes (the folder plus each printable
    ASCII character) paginated side by side, up to `threads` at once, plus the two ranges no such prefix holds,
    by key order (S3 lists in UTF-8 byte order): keys whose first character sorts before a space, and keys whose
    first character sorts after DEL (non-ASCII), unless the first page holds them all. Why by hand: fsspec lists a
    prefix page after page in one loop."""
    from concurrent.futures import ThreadPoolExecutor

    bucket, _, key = folder.partition("/")
    base = key.rstrip("/") + "/" if key else ""
    many = _listing_fs(fs)  # for the ranges: its session (loaded on first use) leaves timestamps unparsed

    def page(client: Any = many, **kwargs: Any) -> dict:
        """One LIST request (up to 1,000 keys), retried."""
        return retry(
            lambda: client.call_s3("list_objects_v2", Bucket=bucket, **kwargs), f"list s3://{bucket}/{kwargs['Prefix']}"
        )

    def pages(prefix: str, start_after: str | None = None, stop: Callable[[str], bool] | None = None) -> list[str]:
        out, kwargs = [], {"Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        while True:
            listed = page(**kwargs)
            for o in listed.get("Contents", []):
                if stop is not None and stop(o["Key"]):
                    return out
                out.append(o["Key"])
            if not listed.get("IsTruncated"):
                return out
            kwargs["ContinuationToken"] = listed["NextContinuationToken"]

    def first_char(k: str) -> str:
        return k[len(base) : len(base) + 1]

    # One page first: a folder of up to 1,000 keys (most outputs' folders, small inputs) is one request, not 98.
    first = page(fs, Prefix=base)
    if not first.get("IsTruncated"):
        keys = [o["Key"] for o in first.get("Contents", [])]
    else:
        ranges = [lambda: pages(base, stop=lambda k: first_char(k) >= " ")]  # control characters first
        ranges += [lambda ch=ch: pages(base + ch) for ch in PRINTABLE]
        ranges += [lambda: pages(base, start_after=base + "\x7f\U0010ffff")]  # non-ASCII last
        with ThreadPoolExecutor(threads) as pool:
            keys = [k for part in pool.map(lambda f: f(), ranges) for k in part]
    return [f"{bucket}/{k}" for k in keys if not k.endswith("/")]
