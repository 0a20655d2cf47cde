"""Listing an input's WebDataset shards: a folder or prefix, one shard, a list file, a brace pattern or a glob,
on a local disk or an object store; and the checks between an input and its output."""

from __future__ import annotations

import codecs
import logging
import os
import re
from dataclasses import dataclass, field

import braceexpand
from fsspec import AbstractFileSystem
from fsspec.utils import glob_translate

from dpiqa.engine.shards.naming import SHARD_SUFFIX_NAMES, is_shard_name, shard_names
from dpiqa.errors import UsageError
from dpiqa.storage import canonical, get_fs, inside, is_local, is_s3, join, list_s3_keys, parent, to_url

log = logging.getLogger(__name__)


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
    kind = _kind(fs, path)
    if kind is not None:
        if kind == "directory":
            root = to_url(fs, path.rstrip("/"))
            if is_local(fs):
                found, unreadable = _find_local(path)
            else:
                found = list_s3_keys(fs, path) if is_s3(fs) else fs.find(path)
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
        root = _fixed_folder(spec, _first_magic(spec), storage_options)
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
    if not is_s3(fs):
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


def _kind(fs: AbstractFileSystem, path: str) -> str | None:
    """`directory`, `file` (or another kind fsspec names), or None where nothing is: one `info` call, on S3 a
    HEAD and at most a one-key listing. (`fs.isdir` on S3 lists the whole prefix, page after page, into s3fs's
    cache: at 10^6 keys 1,000 requests and ~1.5 KiB of driver memory per key, measured: 1,555 bytes a shard
    still held after planning 6,000 shards on the loopback server.)"""
    if not path:
        return None
    try:
        return fs.info(path)["type"]
    except (ValueError, OSError):  # absent (FileNotFoundError), or a pattern that is no valid object name
        return None


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


GLOB_CHARS = "*?["


def _magic(path: str) -> bool:
    return any(ch in path for ch in GLOB_CHARS)


def _first_magic(path: str) -> int:
    """Where a glob's pattern starts: the first of its special characters."""
    return min(path.index(ch) for ch in GLOB_CHARS if ch in path)


def _glob(spec: str, storage_options: dict | None) -> list[str]:
    """The tar shards a glob matches. On S3 the keys below the pattern's fixed folder come from one ranged
    listing (`list_s3_keys`) and are matched with fsspec's own glob rules (`glob_translate`): `fs.glob` would
    list them page after page and keep every entry in s3fs's cache."""
    fs, path = get_fs(spec, storage_options)
    if is_s3(fs):
        folder = path[: _first_magic(path)].rsplit("/", 1)[0]
        match = re.compile(glob_translate(path)).match
        return [to_url(fs, k) for k in list_s3_keys(fs, folder) if is_shard_name(k) and match(k)]
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
        if is_s3(fs) and "/" in path:  # ranged listing, no s3fs cache (fs.ls keeps ~1.5 KiB per key)
            present = {to_url(fs, k): size for k, size in list_s3_keys(fs, path, sizes=True)}
        else:
            try:
                present = {to_url(fs, e["name"]): int(e.get("size") or 0) for e in fs.ls(path, detail=True)}
            except (FileNotFoundError, NotADirectoryError):
                present = {}
        out.update({u: present.get(u) for u in members})
    return out


def _missing(urls: list[str], storage_options: dict | None) -> list[str]:
    """The URLs that do not exist (`sizes`)."""
    return sorted(u for u, size in sizes(urls, storage_options).items() if size is None)
