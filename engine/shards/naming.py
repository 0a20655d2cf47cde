"""WebDataset shard names: which files are tar shards, and the output name each shard is written under."""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterable

from dpiqa.storage import S3_VERSION_MARK

# Tar shards, compressed or not (the reader tells the compression by the bytes, not by the name).
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz", ".tar.zst", ".tzst")
# the suffixes as the one-line errors name them
SHARD_SUFFIX_NAMES = ".tar, .tar.gz, .tgz, .tar.bz2, .tar.xz or .tar.zst"


def is_shard_name(path: str) -> bool:
    """Whether a file name has a tar shard's suffix (`.tar`, `.tar.gz`, `.tgz`, `.tar.bz2`, `.tar.xz`,
    `.tar.zst`, ...; any case)."""
    return path.lower().endswith(SHARD_SUFFIXES)


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
    name = name.replace(S3_VERSION_MARK, "_versionId=")
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
