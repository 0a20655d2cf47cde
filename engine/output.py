"""The output location of a run: its identity file, per-shard files and markers, and the manifest.

Layout (local or any fsspec URL):

    OUT/_run.json              the run's identity (model, checkpoint hash, preprocessing, options)
    OUT/scores/NAME.parquet    one file per input shard, NAME derived from the shard URL
    OUT/maps/NAME.parquet      quality maps (float16), when asked for
    OUT/_done/NAME.json        completion marker, written LAST (counts and the config hash)
    OUT/manifest.json          written when a run ends
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from engine.io import get_fs, join, retry

log = logging.getLogger(__name__)

RUN_FILE = "_run.json"
MANIFEST = "manifest.json"
SCORES_DIR = "scores"
MAPS_DIR = "maps"
DONE_DIR = "_done"


@dataclass
class RunResult:
    """The manifest of a run over shards (`score`, `filter`), and its exit status: 1 when a shard failed."""

    manifest: dict = field(default_factory=dict)

    @property
    def failed(self) -> dict[str, str]:
        return self.manifest.get("failed_shards", {})

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


class ForeignOutputError(ValueError):
    """The output location holds results of another model or configuration."""


def config_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class OutputLocation:
    """Reads and writes a run's files under one URL.

    Args:
        url: local folder or fsspec URL.
        storage_options: fsspec options.
    """

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = storage_options
        self.fs, self.path = get_fs(url, storage_options)

    def _p(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts])

    def child(self, *parts: str) -> str:
        """The URL of a file below this location."""
        return join(self.url, *parts)

    def _forget_listings(self) -> None:
        """fsspec caches listings per filesystem instance (s3fs per folder); another process or
        filesystem instance may have changed ours, and markers must be read fresh."""
        for sub in ("", SCORES_DIR, MAPS_DIR, DONE_DIR):
            self.fs.invalidate_cache(self._p(sub) if sub else self.path)

    # -- identity -------------------------------------------------------------------------------
    def claim(self, identity: dict, overwrite: bool = False) -> str:
        """Make this location the output of a run with `identity`; returns its config hash.

        Raises:
            ForeignOutputError: the location holds another configuration's results (or results
                without an identity file) and `overwrite` is false.
        """
        digest = config_hash(identity)
        self._forget_listings()
        existing = self.read_json(RUN_FILE)
        ours = [d for d in (SCORES_DIR, MAPS_DIR, DONE_DIR, MANIFEST) if self.fs.exists(self._p(d))]
        if existing is not None and existing.get("config_hash") == digest and not overwrite:
            return digest
        if (existing is not None or ours) and not overwrite:
            what = (
                f"results of model {existing.get('identity', {}).get('model')!r} "
                f"(config {existing.get('config_hash')})" if existing else f"{', '.join(ours)} but no {RUN_FILE}"
            )
            raise ForeignOutputError(
                f"{self.url} holds {what}, not this run's (config {digest}); "
                "choose another --output or pass --overwrite to replace them"
            )
        if overwrite:
            for d in (SCORES_DIR, MAPS_DIR, DONE_DIR, MANIFEST, RUN_FILE):
                if self.fs.exists(self._p(d)):
                    self.fs.rm(self._p(d), recursive=True)
        self.fs.makedirs(self.path, exist_ok=True)
        self.write_json(RUN_FILE, {"config_hash": digest, "identity": identity})
        return digest

    # -- markers --------------------------------------------------------------------------------
    def done(self) -> dict[str, dict]:
        """Completion markers by shard name, fetched in one `cat` call, which s3fs (any async fsspec
        filesystem) serves concurrently: 100,000 markers on an object store would otherwise cost as
        many sequential round trips."""
        self._forget_listings()
        paths = self.fs.glob(self._p(DONE_DIR, "*.json"))
        if not paths:
            return {}
        contents = retry(lambda: self.fs.cat(paths), f"read {len(paths)} markers under {self.url}")
        if isinstance(contents, bytes):  # a single path comes back unwrapped
            contents = {paths[0]: contents}
        return {p.rsplit("/", 1)[-1][: -len(".json")]: json.loads(data) for p, data in contents.items()}

    def write_marker(self, name: str, marker: dict) -> None:
        self.write_json(f"{DONE_DIR}/{name}.json", marker)

    # -- files ----------------------------------------------------------------------------------
    def write_table(self, subdir: str, name: str, table: pa.Table) -> None:
        path = self._p(subdir, f"{name}.parquet")

        def put() -> None:
            self.fs.makedirs(self._p(subdir), exist_ok=True)
            with self.fs.open(path, "wb") as f:
                pq.write_table(table, f, compression="zstd")

        retry(put, f"write {path}")

    def read_json(self, rel: str) -> dict | None:
        path = self._p(rel)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rt") as f:
            return json.load(f)

    def write_json(self, rel: str, data: Any) -> None:
        path = self._p(rel)

        def put() -> None:
            parent = path.rsplit("/", 1)[0]
            self.fs.makedirs(parent, exist_ok=True)
            with self.fs.open(path, "wt") as f:
                json.dump(data, f, indent=2, sort_keys=True)

        retry(put, f"write {path}")

    def score_files(self) -> list[str]:
        """URLs of the per-shard score files that have a completion marker."""
        return [self.child(SCORES_DIR, f"{name}.parquet") for name in sorted(self.done())]
