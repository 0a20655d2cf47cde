"""The output location of a run: its identity file, per-shard files and markers, and the manifest.

Layout (local or any fsspec URL):

    OUT/_run.json              the run's identity (model, checkpoint hash, preprocessing, options)
    OUT/scores/NAME.parquet    one file per input shard, NAME derived from the shard URL
    OUT/maps/NAME.parquet      quality maps (float16), when asked for
    OUT/_done/NAME.json        completion marker, written LAST (counts and the config hash)
    OUT/manifest.json          written when a run ends (the latest run's)
    OUT/runs/RUN.json          every run's manifest, RUN = its start time (UTC) and a random suffix
    OUT/runs/RUN.shards-K.parquet  the markers that run wrote (name, marker JSON), recorded in bulk
    OUT/audits/history.parquet one row per `dpiqa audit` of this output (trends over nights)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dpiqa.errors import FAILED_SHARDS
from dpiqa.failpoints import failpoint
from dpiqa.json_object import NotAJsonObject, json_object
from dpiqa.storage import fs_join, get_fs, is_local, join, list_s3_keys, retry

log = logging.getLogger(__name__)

RUN_FILE = "_run.json"
MANIFEST = "manifest.json"
RUNS_DIR = "runs"  # runs/<run id>.json: one manifest per run (the shards it wrote), ids sort by start time
AUDITS_DIR = "audits"  # audits/history.parquet: one row per audit of this output
SCORES_DIR = "scores"
MAPS_DIR = "maps"
DONE_DIR = "_done"
COMPACTED_DIR = "compacted"  # compacted/part-K.parquet + compacted/_part-K.json (`dpiqa compact`)


@dataclass
class RunResult:
    """The manifest of a run over shards (`score`, `filter`), and its exit status: 1 when a shard failed."""

    manifest: dict = field(default_factory=dict)

    @property
    def failed(self) -> dict[str, str]:
        return self.manifest.get("failed_shards", {})

    @property
    def exit_code(self) -> int:
        return FAILED_SHARDS if self.failed else 0

    def summary_line(self, verb: str = "scored", audit_above: float = 0.05) -> str:
        """What the run did, in one line: rows ok and in error by status, shards written, already done and
        failed; a pointer to `dpiqa audit` when errors exceed `audit_above` of the rows."""
        m = self.manifest
        rows, statuses, shards = m.get("rows", 0), dict(m.get("statuses", {})), m.get("shards", {})
        ok = statuses.pop("ok", 0)
        errors = sum(statuses.values())
        by_status = ", ".join(f"{n:,} {s}" for s, n in sorted(statuses.items(), key=lambda kv: (-kv[1], kv[0])))
        line = (
            f"{verb} {rows:,} rows from {shards.get('written', 0)} shards: {ok:,} ok, {errors:,} errors"
            + (f" ({by_status})" if by_status else "")
            + f"; shards: {shards.get('skipped_done', 0)} already done, {shards.get('failed', 0)} failed"
            + f" -> {m.get('output')}"
        )
        if rows and errors / rows > audit_above:
            line += (
                f"\n{errors / rows:.0%} of these rows are errors: `dpiqa audit --scores {m.get('output')}` "
                "shows which shards and sources they come from"
            )
        return line


class ForeignOutputError(ValueError):
    """The output location holds results of another model or configuration."""


def config_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class CorruptFileError(ValueError):
    """A run file that exists but does not parse (a write cut short by a kill or a full disk)."""


class OutputLocation:
    """Reads and writes a run's files under one URL.

    Files are written whole or not at all: on a local file system through a temporary file renamed into
    place, on an object store as one PUT (an object appears only when its upload completes). A marker
    that does not parse anyway (a copy cut short, a disk filled by another program) counts as not done.

    Args:
        url: local folder or fsspec URL.
        storage_options: fsspec options.
    """

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        self.url = url.rstrip("/") or url
        self.storage_options = storage_options
        self.fs, self.path = get_fs(url, storage_options)
        self.local = is_local(self.fs)

    def _p(self, *parts: str) -> str:
        return fs_join(self.path, *parts)

    def child(self, *parts: str) -> str:
        """The URL of a file below this location."""
        return join(self.url, *parts)

    def _forget_listings(self) -> None:
        """fsspec caches listings per filesystem instance (s3fs per folder); another process or
        filesystem instance may have changed ours, and markers must be read fresh."""
        for sub in ("", SCORES_DIR, MAPS_DIR, DONE_DIR, RUNS_DIR, AUDITS_DIR):
            self.fs.invalidate_cache(self._p(sub) if sub else self.path)

    def check_writable(self) -> None:
        """Refuse a location that is an existing file (one line, before anything is written)."""
        if self.fs.isfile(self.path):
            raise ValueError(f"--output {self.url} is an existing file; give a folder or prefix")

    # -- identity -------------------------------------------------------------------------------
    def claim(self, identity: dict, overwrite: bool = False, model: str | None = None) -> str:
        """Make this location the output of a run with `identity`; returns its config hash.

        Args:
            identity: what makes two runs' results comparable.
            overwrite: replace another configuration's results.
            model: the model as the user named it, for the refusal message of a later run.

        Raises:
            ForeignOutputError: the location holds another configuration's results (or results
                without an identity file) and `overwrite` is false.
        """
        digest = config_hash(identity)
        self.check_writable()
        self._forget_listings()
        try:
            existing = self.read_json(RUN_FILE)
        except CorruptFileError as exc:
            # Cut short while being written: the markers say whose results are here.
            hashes = {m.get("config_hash") for m in self.done().values()}
            if not overwrite and hashes - {digest}:
                raise ForeignOutputError(
                    f"{exc}; its results are of config {', '.join(sorted(map(str, hashes)))}, "
                    f"not this run's ({digest}): pass --overwrite to replace them"
                ) from None
            log.warning("%s; rewriting it (the completed shards are this configuration's)", exc)
            self.write_json(RUN_FILE, {"config_hash": digest, "identity": identity, "model": model})
            return digest
        ours = [
            d for d in (SCORES_DIR, MAPS_DIR, DONE_DIR, MANIFEST, RUNS_DIR, COMPACTED_DIR) if self.fs.exists(self._p(d))
        ]
        if existing is not None and existing.get("config_hash") == digest and not overwrite:
            return digest
        if (existing is not None or ours) and not overwrite:
            if existing is not None:
                whose = existing.get("model") or existing.get("identity", {}).get("architecture") or "unknown"
                what = f"results of model {whose!r} (config {existing.get('config_hash')})"
            else:
                what = f"{', '.join(ours)} but no {RUN_FILE}"
            raise ForeignOutputError(
                f"{self.url} holds {what}, not this run's (config {digest}); "
                "choose another --output or pass --overwrite to replace them"
            )
        if overwrite:
            for d in (SCORES_DIR, MAPS_DIR, DONE_DIR, MANIFEST, RUNS_DIR, AUDITS_DIR, COMPACTED_DIR, RUN_FILE):
                self.remove(d)
        self.fs.makedirs(self.path, exist_ok=True)
        self.write_json(RUN_FILE, {"config_hash": digest, "identity": identity, "model": model})
        return digest

    # -- markers --------------------------------------------------------------------------------
    def done_names(self) -> set[str]:
        """The names of the shards with a completion marker: one listing of `_done/` (`listed_names`), no marker
        read."""
        self._forget_listings()
        return self.listed_names(DONE_DIR, ".json")

    def done(self) -> dict[str, dict]:
        """Completion markers by shard name. Which shards are done is one listing (`done_names`); what their
        markers say comes from the runs' records (`runs/RUN.shards-K.parquet`: each run records the markers it
        wrote, in bulk), and only markers no record holds (a run killed before it recorded them, or an output
        older than the records) are read, concurrently (`cat_ranges`, which s3fs serves in parallel). Markers are
        read by exact path, never through a glob (a `[` in a name is a glob pattern to fsspec). A marker that
        does not parse is not done: a warning names it and the shard is done again."""
        names = self.done_names()
        if not names:
            return {}
        known = self.recorded_markers()
        markers = {n: known[n] for n in names if n in known}
        missing = sorted(names - markers.keys())
        if missing:
            markers.update(self._read_markers(missing))
        return markers

    def done_urls(self, record_reads: bool = False) -> dict[str, str]:
        """The input URL of each done shard, by name: as `done`, reading only the records' `url` column (a
        million markers' JSON never parsed). With `record_reads`, markers that had to be read one by one are
        recorded (`runs/TIME-read.shards-00000.parquet`, in time order with the runs' records), so the next run reads
        none of them again."""
        names = self.done_names()
        if not names:
            return {}
        known = self._recorded_column("url")
        urls = {n: known[n] for n in names if n in known}
        missing = sorted(names - urls.keys())
        if missing:
            read = self._read_markers(missing)
            urls.update({n: str(m.get("shard")) for n, m in read.items()})
            if record_reads and len(read) >= 100:
                stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
                self.record_markers(f"{stamp}-read", 0, list(read.items()))
        return urls

    def _read_markers(self, names: list[str]) -> dict[str, dict]:
        paths = [self._p(DONE_DIR, f"{n}.json") for n in names]
        contents = retry(
            lambda: self.fs.cat_ranges(paths, None, None, on_error="return"),
            f"read {len(paths)} markers under {self.url}",
        )
        markers = {}
        for name, data in zip(names, contents, strict=True):
            if isinstance(data, FileNotFoundError):
                continue  # removed since the listing
            if isinstance(data, BaseException):
                raise data
            try:
                marker = json_object(data)
            except NotAJsonObject as exc:
                log.warning(
                    "%s: unreadable completion marker (%s); the shard counts as not done and is done again",
                    self.child(DONE_DIR, f"{name}.json"),
                    exc,
                )
                continue
            markers[name] = marker
        return markers

    def record_markers(self, run_id: str, part: int, markers: list[tuple[str, dict]]) -> None:
        """Record the markers a run wrote (`runs/RUN.shards-PART.parquet`: name and marker JSON), so that a later
        run learns what they say from a few files instead of one read per marker."""
        table = pa.table(
            {
                "name": pa.array([n for n, _ in markers], pa.string()),
                "url": pa.array([str(m.get("shard")) for _, m in markers], pa.string()),
                "marker": pa.array([json.dumps(m, sort_keys=True) for _, m in markers], pa.string()),
            }
        )
        self.write_table(RUNS_DIR, f"{run_id}.shards-{part:05d}", table)

    def recorded_markers(self, run_id: str | None = None) -> dict[str, dict]:
        """Every marker the runs recorded (or one run's: `run_id`), by name; a later record of a name wins."""
        return {n: json.loads(m) for n, m in self._recorded_column("marker", run_id).items()}

    def _recorded_column(self, column: str, run_id: str | None = None) -> dict[str, str]:
        want = f"{run_id}.shards-" if run_id else ".shards-"
        try:
            paths = sorted(
                p for p in self.fs.ls(self._p(RUNS_DIR), detail=False) if p.endswith(".parquet") and want in p
            )
        except FileNotFoundError:
            return {}
        out: dict[str, str] = {}
        for path in paths:  # sorted by time: a later record of a name wins
            try:
                table = retry(
                    lambda p=path: pq.read_table(p, columns=["name", column], filesystem=self.fs), f"read {path}"
                )
            except Exception as exc:  # a record cut short: its markers are read instead
                log.warning("%s: unreadable (%s); the markers it recorded are read one by one", path, exc)
                continue
            out.update(zip(table.column("name").to_pylist(), table.column(column).to_pylist(), strict=True))
        return out

    def remove(self, rel: str) -> None:
        """Delete a file or folder below this location, if there. By exact paths: fsspec's `rm` takes a
        `[` or `*` in a name for a glob pattern and would miss the file, or delete another."""
        path = self._p(rel)
        if not self.fs.exists(path):
            return
        if self.local:
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            return
        files = [path] if self.fs.isfile(path) else self.fs.find(path)
        if any(ch in f for f in files for ch in "*?["):
            for f in files:
                self.fs.rm_file(f)
        elif files:
            self.fs.rm(files)
        self.fs.invalidate_cache(path)

    def write_marker(self, name: str, marker: dict) -> None:
        self.write_json(f"{DONE_DIR}/{name}.json", marker)

    # -- files ----------------------------------------------------------------------------------
    def _put(self, rel: str, write: Callable[[Any], None], mode: str = "wb") -> None:
        """Write one file whole or not at all (see the class), retrying transient errors."""
        path = self._p(rel)

        def put() -> None:
            folder = path.rsplit("/", 1)[0]
            if not self.local:
                # no folder to make on an object store (s3fs's makedirs asks S3 whether the bucket exists: one
                # HEAD request per file written)
                _upload(self.fs, path, write, mode)
                return
            self.fs.makedirs(folder, exist_ok=True)
            tmp = f"{folder}/.{path.rsplit('/', 1)[1]}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                with open(tmp, mode) as f:
                    write(f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)

        retry(put, f"write {path}")

    def spool(self, rel: str) -> Spool:
        """A file to write `rel` into piece by piece (a shard's rows as they are scored), committed whole
        later: on a local file system a hidden temporary file beside its final name, renamed into place; on
        an object store a local temporary file, uploaded at commit. Memory never holds the whole file."""
        return Spool(self, rel)

    def abort_stale_uploads(self, before: datetime) -> int:
        """Abort the unfinished multipart uploads below this location that started before `before` (a writer
        killed mid-upload leaves its parts, billed until aborted); returns how many. Only on S3 (s3fs); one
        run writes a location at a time, so an upload older than this run's start is no live writer's."""
        if self.local or not hasattr(self.fs, "call_s3"):
            return 0
        bucket, _, prefix = self.path.partition("/")
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        aborted, kwargs = 0, {"Bucket": bucket, "Prefix": prefix}
        while True:
            try:
                page = self.fs.call_s3("list_multipart_uploads", **kwargs)
            except Exception as exc:  # a store without the call (or without the permission)
                log.debug("%s: cannot list multipart uploads (%s)", self.url, exc)
                return aborted
            for upload in page.get("Uploads", []):
                if upload["Initiated"] < before:
                    self.fs.call_s3(
                        "abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
            if not page.get("IsTruncated"):
                break
            kwargs.update(KeyMarker=page.get("NextKeyMarker"), UploadIdMarker=page.get("NextUploadIdMarker"))
        if aborted:
            log.warning("%s: aborted %d unfinished multipart uploads left by an earlier run", self.url, aborted)
        return aborted

    def write_table(self, subdir: str, name: str, table: pa.Table) -> None:
        self._put(f"{subdir}/{name}.parquet", lambda f: pq.write_table(table, f, compression="zstd"))

    def read_json(self, rel: str) -> dict | None:
        """A JSON file of the run (an object); None when absent.

        Raises:
            CorruptFileError: it exists but does not parse, or holds no JSON object (`[1, 2]`, `"x"`).
        """
        path = self._p(rel)
        try:
            with self.fs.open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        try:
            return json_object(data)
        except NotAJsonObject as exc:
            raise CorruptFileError(f"{self.child(rel)}: {exc} ({len(data)} bytes)") from None

    def write_json(self, rel: str, data: Any) -> None:
        text = json.dumps(data, indent=2, sort_keys=True).encode()
        self._put(rel, lambda f: f.write(text))

    def run_shard_names(self, record: dict) -> set[str]:
        """The output names of the shards one run wrote: its recorded markers (`record_markers`), or the
        `written` list of a run record made before those existed; with those of the unfinished runs it resumed
        (`resumes`: a run interrupted or killed and rerun is one night's work in two records)."""
        if "written" in record:
            names = {w["name"] for w in record["written"]}
        else:
            names = set(self._recorded_column("url", record.get("run_id")))
        for earlier in record.get("resumes", []):
            names |= set(self._recorded_column("url", earlier))
        return names

    def unfinished_runs(self) -> list[str]:
        """The ids of the runs after the last finished one that did not finish: interrupted (Ctrl-C, SIGTERM:
        their record says so) or killed (markers recorded, no record), oldest first; a run that resumes them
        names them (`resumes`)."""
        try:
            paths = self.fs.ls(self._p(RUNS_DIR), detail=False)
        except FileNotFoundError:
            return []
        ids: dict[str, bool] = {}  # run id -> finished
        for path in paths:
            base = path.rsplit("/", 1)[-1]
            if base.endswith(".json"):
                ids.setdefault(base[: -len(".json")], False)
            elif ".shards-" in base and not base.split(".shards-")[0].endswith("-read"):
                ids.setdefault(base.split(".shards-")[0], False)
        for run_id in sorted(ids):
            try:
                record = self.read_json(f"{RUNS_DIR}/{run_id}.json")
            except CorruptFileError:
                record = None
            ids[run_id] = record is not None and not record.get("interrupted")
        unfinished: list[str] = []
        for run_id in sorted(ids):
            if ids[run_id]:
                unfinished = []
            else:
                unfinished.append(run_id)
        return unfinished

    def runs(self) -> list[dict]:
        """Every run's manifest (`runs/*.json`), oldest first; one that does not parse is left out with a
        warning."""
        try:
            paths = sorted(p for p in self.fs.ls(self._p(RUNS_DIR), detail=False) if p.endswith(".json"))
        except FileNotFoundError:
            return []
        out = []
        for path in paths:
            rel = f"{RUNS_DIR}/{path.rsplit('/', 1)[-1]}"
            try:
                record = self.read_json(rel)
            except CorruptFileError as exc:
                log.warning("%s; that run is left out", exc)
                continue
            if record is not None:
                out.append(record)
        return out

    # -- compacted parts (`dpiqa compact`, engine/compact.py) ------------------------------------
    def compacted_parts(self) -> list[dict]:
        """The manifests of the complete compacted parts, in part order: `compacted/_part-K.json`, written after
        its `compacted/part-K.parquet` (a part is complete iff its manifest exists). A manifest that does not
        parse stops the read with one line: its part's shards have no per-shard file any more."""
        folder = self._p(COMPACTED_DIR)
        self.fs.invalidate_cache(folder)
        try:
            listed = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        names = sorted(
            (p.rsplit("/", 1)[-1] for p in listed if p.rsplit("/", 1)[-1].startswith("_part-")),
            key=part_number,
        )
        names = [n for n in names if n.endswith(".json")]
        if not names:
            return []
        paths = [f"{folder}/{n}" for n in names]
        contents = retry(lambda: self.fs.cat_ranges(paths, None, None), f"read {len(paths)} part manifests")
        out = []
        for name, data in zip(names, contents, strict=True):
            try:
                out.append(json.loads(data))
            except ValueError as exc:
                raise CorruptFileError(f"{self.child(COMPACTED_DIR, name)} does not parse ({exc})") from None
        return out

    def listed_names(self, subdir: str, suffix: str) -> set[str]:
        """The names of the files `subdir/NAME{suffix}` below this location, from one listing (on S3 split by
        the names' leading characters and listed concurrently, as `done_names`); hidden files left out."""
        folder = self._p(subdir)
        self.fs.invalidate_cache(folder)
        if self.local:
            try:
                return {n[: -len(suffix)] for n in os.listdir(folder) if n.endswith(suffix) and not n.startswith(".")}
            except FileNotFoundError:
                return set()
        if hasattr(self.fs, "call_s3"):
            keys = list_s3_keys(self.fs, folder)
        else:
            try:
                keys = self.fs.ls(folder, detail=False)
            except FileNotFoundError:
                return set()
        return {k.rsplit("/", 1)[-1][: -len(suffix)] for k in keys if k.endswith(suffix)}

    def remove_files(self, rels: list[str]) -> None:
        """Delete files below this location by exact path, in bulk (S3: 1,000 keys per request); a file already
        gone is no error (a rerun finishing a removal a kill cut short)."""
        paths = [self._p(rel) for rel in rels]
        if self.local:
            for path in paths:
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
            return
        if any(ch in p for p in paths for ch in "*?["):  # fsspec's rm takes these for glob patterns
            for path in paths:
                try:
                    retry(lambda p=path: self.fs.rm_file(p), f"remove {path}")
                except FileNotFoundError:
                    pass
        elif paths:
            retry(lambda: self.fs.rm(paths), f"remove {len(paths)} files below {self.url}")
        for folder in {p.rsplit("/", 1)[0] for p in paths}:
            self.fs.invalidate_cache(folder)


# Objects up to this size are uploaded with one PUT; larger ones as a multipart upload (s3fs's file), which is
# aborted when the write fails: fsspec's `with fs.open(...)` would complete it, and so commit a truncated file
# under the final key.
SINGLE_PUT_BYTES = 64 << 20


def _upload(fs: Any, path: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write an object whole or not at all: `write` fills a buffered file whose upload is discarded (its
    multipart upload aborted) on any error, and completed only when `write` returned."""
    f = fs.open(path, mode, block_size=SINGLE_PUT_BYTES)
    try:
        write(f)
    except BaseException:
        f.discard()  # s3fs: aborts the multipart upload, if one was started
        f.closed = True  # so that no later close() (fsspec's __del__) uploads what is left
        raise
    f.close()


class Spool:
    """A file being written whole (`OutputLocation.spool`): `path` is local, `commit()` moves it to its final
    name (rename, or an upload that is complete or absent), `discard()` drops it. Usable as a context manager
    that discards what was not committed."""

    def __init__(self, location: OutputLocation, rel: str) -> None:
        self.location, self.rel = location, rel
        self.final = location._p(rel)
        if location.local:
            folder, name = self.final.rsplit("/", 1)
            os.makedirs(folder, exist_ok=True)
            self.path = f"{folder}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
        else:
            fd, self.path = tempfile.mkstemp(prefix="dpiqa-", suffix=".spool", dir=os.environ.get("DPIQA_SPOOL"))
            os.close(fd)
        self.committed = False

    def commit(self) -> None:
        failpoint("commit.file", self.rel)
        if self.location.local:
            with open(self.path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(self.path, self.final)
        else:

            def copy(f: Any) -> None:
                with open(self.path, "rb") as src:
                    shutil.copyfileobj(src, f, 8 << 20)

            self.location._put(self.rel, copy)
            os.remove(self.path)
        self.committed = True

    def discard(self) -> None:
        if not self.committed and os.path.exists(self.path):
            os.remove(self.path)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def part_number(name: str) -> int:
    """K of `part-K.parquet`, `_part-K.json` or a path ending in one (parts sort by number, not by text)."""
    stem = name.rsplit("/", 1)[-1].lstrip("_.").split(".", 1)[0]
    return int(stem.split("-", 1)[1])


def is_compacted_part(path: str) -> bool:
    """Whether `path` is a compacted part (`.../compacted/part-K.parquet`), which holds the rows of many shards."""
    folder, _, name = path.rstrip("/").rpartition("/")
    return folder.endswith(f"/{COMPACTED_DIR}") and name.startswith("part-") and name.endswith(".parquet")
