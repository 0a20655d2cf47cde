"""`dpiqa filter`: scores + a threshold (or a top fraction) -> new WebDataset shards of the kept samples,
members copied byte for byte, one output shard per input shard, resumable.

Layout of the output location (local or any fsspec URL):

    NEW/NAME.tar           the kept samples of input shard NAME (NAME as in the scores: scores/NAME.parquet)
    NEW/keys/NAME.parquet  the kept samples' `shard` (URL), `key`, `index`, `score` (all of them: NEW/keys/)
    NEW/_done/NAME.json    completion marker, written LAST (counts, refused samples, the config hash)
    NEW/_run.json          the filter's identity (scores, mode, threshold); another one is refused
    NEW/manifest.json      written when a run ends

Members are written as `KEY.EXT` with the key and extension the shard reader reports (it lower-cases
extensions: `a.JPG` becomes `a.jpg`); their bytes are copied unchanged. A shard is done iff its marker exists. A rerun skips done shards and rewrites the others from the start
(a tar half-written by a killed run is replaced, never appended to), so no sample is written twice.

Test-only: the environment variable `DPIQA_FILTER_SLOW_SECONDS` makes each shard worker sleep that many
seconds after every sample it writes, so a test can kill a run part-way through a shard.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import tarfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dpiqa import storage
from dpiqa.engine import schema
from dpiqa.engine.output import DONE_DIR, OutputLocation, RunResult
from dpiqa.engine.runner import ShardJob, Tally, pending_shards, run_shard_job
from dpiqa.engine.scores import ScoredRun, ScoredShard
from dpiqa.engine.stages.source import Sample, shard_samples
from dpiqa.engine.stages.write import ShardFact

log = logging.getLogger(__name__)

KEYS_DIR = "keys"
SLOW_ENV = "DPIQA_FILTER_SLOW_SECONDS"
MAX_ERRORS_PER_SHARD = 50  # refused samples listed in a marker (all are counted)

KEPT_SCHEMA = pa.schema(
    [
        pa.field("shard", pa.string(), nullable=False),
        pa.field("key", pa.string()),
        pa.field("index", pa.int64(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
    ]
)


@dataclass
class FilterConfig:
    """What a filter run reads, keeps and writes.

    Args:
        scores: output location of the `dpiqa score` run.
        input: the shards (brace pattern, glob, prefix/folder, or a text file of URLs), as for `score`.
        output: where the new shards go (local folder or fsspec URL).
        min_score: keep rows with status `ok` and `score >= min_score`.
        top_fraction: keep the highest scored `ceil(top_fraction * N)` of the N ok rows of the input
            shards; ties at the cut are kept in (shard name, index) order.
        keys_only: write only the kept keys (`keys/NAME.parquet`), no shards.
        overwrite: replace another filter's results at `output`.
        workers: shards filtered at once by the local executor.
        storage_options: fsspec options for every location.
    """

    scores: str
    input: str
    output: str
    min_score: float | None = None
    top_fraction: float | None = None
    keys_only: bool = False
    overwrite: bool = False
    workers: int = 4
    storage_options: dict | None = None

    def __post_init__(self) -> None:
        if (self.min_score is None) == (self.top_fraction is None):
            raise ValueError("give exactly one of --min-score and --top-fraction")
        if self.top_fraction is not None and not 0 < self.top_fraction <= 1:
            raise ValueError(f"--top-fraction must be in (0, 1], not {self.top_fraction}")
        if self.min_score is not None and not math.isfinite(self.min_score):
            raise ValueError(f"--min-score must be a finite number, not {self.min_score}")


# -- which rows are kept ---------------------------------------------------------------------------


def sortable(scores: np.ndarray) -> np.ndarray:
    """float32 scores -> uint32 keys in the same order (IEEE bits with the sign folded), so that an exact
    rank can be found with two 16-bit radix histograms."""
    # `+ 0` turns -0.0 into +0.0: they compare equal as floats and must get the same key.
    bits = (np.ascontiguousarray(scores, dtype=np.float32) + np.float32(0)).view(np.uint32)
    return np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))


def unsortable(key: int) -> float:
    bits = key & 0x7FFFFFFF if key & 0x80000000 else ~key & 0xFFFFFFFF
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


@dataclass
class Cutoff:
    """The rule that keeps a row: status `ok` and sortable score key above `key`, or equal to it and
    among the first `ties[shard]` such rows of its shard (by index).

    `min_score` runs keep every tie (`ties` is None); `top_fraction` runs keep exactly `kept` rows.
    """

    key: int
    score: float | None  # None: nothing is kept (no ok row)
    inclusive: bool = True  # rows equal to `key` are kept (all of them when `ties` is None)
    ties: dict[str, int] | None = None
    kept: int | None = None
    total: int | None = None

    def identity(self) -> dict:
        return {"score": self.score, "kept": self.kept, "total": self.total}

    def keep(
        self, name: str, status: np.ndarray, scores: np.ndarray, valid: np.ndarray, index: np.ndarray
    ) -> np.ndarray:
        """Mask of the kept rows of shard `name`."""
        ok = (status == schema.OK) & valid
        keys = sortable(np.where(ok, scores, np.float32(0)))
        above = ok & (keys > self.key)
        equal = ok & (keys == self.key)
        if self.ties is None:
            return above | equal if self.inclusive else above
        quota = self.ties.get(name, 0)
        tied = np.flatnonzero(equal)
        tied = tied[np.argsort(index[tied], kind="stable")][:quota]
        mask = above.copy()
        mask[tied] = True
        return mask


def min_score_cutoff(min_score: float) -> Cutoff:
    """Keep ok rows whose float32 score is >= `min_score` (compared as float64, as the user typed it)."""
    # The smallest float32 >= min_score, so that the integer-key comparison matches `score >= min_score`.
    f = np.float32(min_score)
    if float(f) < min_score:
        f = np.nextafter(f, np.float32(np.inf))
    return Cutoff(key=int(sortable(np.array([f]))[0]), score=float(f))


def _ok_keys(batch: pa.RecordBatch) -> np.ndarray:
    status = batch.column("status")
    if pa.types.is_dictionary(status.type):
        status = status.dictionary_decode()
    scores = batch.column("score")
    ok = (status.to_numpy(zero_copy_only=False) == schema.OK) & scores.is_valid().to_numpy(zero_copy_only=False)
    return sortable(scores.to_numpy(zero_copy_only=False)[ok])


def top_fraction_cutoff(run: ScoredRun, shards: list[ScoredShard], fraction: float) -> Cutoff:
    """The exact cut that keeps the `ceil(fraction * N)` highest of the N ok scores of `shards`.

    Radix selection on the sortable 32-bit keys, streaming: pass 1 counts the high 16 bits, pass 2 the low
    16 bits within the one high bucket that holds the cut, pass 3 counts each shard's rows at the cut so
    that ties are kept in (shard name, index) order. Memory: two 65,536-bin histograms and a count per
    shard, whatever the number of rows.
    """
    columns = ["score", "status"]
    high = np.zeros(1 << 16, dtype=np.int64)
    for _, batch in run.batches(columns, shards=shards):
        high += np.bincount(_ok_keys(batch) >> 16, minlength=1 << 16)
    total = int(high.sum())
    # Exactly ceil(F x N) for the F the user typed: through its decimal text, not its binary float (0.3 x 10
    # is 3.0000000000000004 in floats, and rounding that away would make 1e-12 x 3 zero).
    want = min(total, math.ceil(Fraction(repr(fraction)) * total))
    if want == 0:
        return Cutoff(key=0xFFFFFFFF, score=None, inclusive=False, ties={}, kept=0, total=total)
    above_high = np.cumsum(high[::-1])[::-1] - high  # rows in buckets above each bucket
    bucket = int(np.flatnonzero((above_high < want) & (above_high + high >= want))[-1])
    low = np.zeros(1 << 16, dtype=np.int64)
    for _, batch in run.batches(columns, shards=shards):
        keys = _ok_keys(batch)
        low += np.bincount(keys[(keys >> 16) == bucket] & 0xFFFF, minlength=1 << 16)
    need = want - int(above_high[bucket])
    above_low = np.cumsum(low[::-1])[::-1] - low
    slot = int(np.flatnonzero((above_low < need) & (above_low + low >= need))[-1])
    key = (bucket << 16) | slot
    ties_wanted = need - int(above_low[slot])
    tie_counts: dict[str, int] = {}
    for shard, batch in run.batches(columns, shards=shards):
        n = int(np.count_nonzero(_ok_keys(batch) == key))
        if n:
            tie_counts[shard.name] = tie_counts.get(shard.name, 0) + n
    ties = {}
    for name in sorted(tie_counts):
        take = min(tie_counts[name], ties_wanted)
        if take:
            ties[name] = take
        ties_wanted -= take
    return Cutoff(key=key, score=unsortable(key), ties=ties, kept=want, total=total)


# -- member names ----------------------------------------------------------------------------------

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


# -- one shard -------------------------------------------------------------------------------------


@dataclass
class ShardTask:
    """One input shard to filter: its URL, its output name and its scores file."""

    url: str
    name: str
    scores_path: str


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
        except Exception as exc:  # noqa: BLE001 - reported as a failed shard; the run goes on
            log.error("filter: shard %s failed: %s: %s", task.url, type(exc).__name__, exc)
            return ShardResult(task.name, task.url, error=f"{type(exc).__name__}: {exc}")

    def run(self, task: ShardTask) -> ShardResult:
        scores_fs, _ = storage.get_fs(self.scores_url, self.storage_options)
        table = storage.retry(
            lambda: pq.read_table(task.scores_path, columns=["index", "key", "score", "status"], filesystem=scores_fs),
            f"read {task.scores_path}",
        )
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

        slow = float(os.environ.get(SLOW_ENV, "0") or 0)
        kept: list[tuple[str, str | None, int, float]] = []
        last = max(wanted) if wanted else -1
        tar_path = f"{out.path.rstrip('/')}/{task.name}.tar"
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
                            if slow:
                                time.sleep(slow)
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


# -- the run ---------------------------------------------------------------------------------------

FilterResult = RunResult


def match_shards(run: ScoredRun, shards: storage.ShardList) -> tuple[list[tuple[str, ScoredShard]], dict[str, str]]:
    """Pair input shard URLs with their completed scores: by the URL the score marker names, else (for
    shards that were moved or copied) by the deterministic output name. Returns the pairs and, for the
    unmatched URLs, why."""
    by_url = {s.url: s for s in run.shards}
    by_name = {s.name: s for s in run.shards}
    names = shards.names
    pairs, missing = [], {}
    for url in shards.urls:
        shard = by_url.get(url) or by_name.get(names[url])
        if shard is None:
            missing[url] = f"no completed scores for this shard in {run.url} (see its {DONE_DIR}/*.json)"
        else:
            pairs.append((url, shard))
    return pairs, missing


def run_filter(config: FilterConfig, executor: str = "auto", address: str | None = None) -> FilterResult:
    """Filter every input shard that has no completion marker at `config.output`.

    Args:
        config: the run.
        executor: `local` (a thread pool of `config.workers`), `ray` (one Ray Data task per shard) or `auto`
            (`dpiqa.engine.executor.choose_executor`).
        address: Ray cluster address for the `ray` executor.

    Raises:
        engine.output.ForeignOutputError: the output holds another filter's results.
        ValueError: bad input (no shard, no scores, output on top of the input).
    """
    t0 = time.monotonic()
    shards = storage.list_shards(config.input, config.storage_options)
    out = OutputLocation(config.output, config.storage_options)
    storage.refuse_overlap(shards, out.url, config.storage_options)
    out.check_writable()
    run = ScoredRun(config.scores, config.storage_options)
    pairs, missing = match_shards(run, shards)
    for url, shard in pairs:
        if storage.canonical(out.child(f"{shard.name}.tar"), config.storage_options) == url:
            raise ValueError(f"--output {config.output} would overwrite input shard {url}; choose another folder")

    if config.top_fraction is not None:
        cutoff = top_fraction_cutoff(run, [s for _, s in pairs], config.top_fraction)
        log.info(
            "filter: top %.4g of %s ok rows = %s rows, cut at score %s",
            config.top_fraction,
            f"{cutoff.total:,}",
            f"{cutoff.kept:,}",
            cutoff.score,
        )
    else:
        cutoff = min_score_cutoff(config.min_score)
    identity = {
        "scores": config.scores,
        "scores_config": (run.run_info or {}).get("config_hash"),
        "min_score": config.min_score,
        "top_fraction": config.top_fraction,
        "cutoff": cutoff.identity() if config.top_fraction is not None else None,
        "keys_only": config.keys_only,
    }
    if config.overwrite:
        _remove_previous(out)
    digest = out.claim(identity, overwrite=config.overwrite)

    todo, skipped = pending_shards(out, shards)
    if executor == "auto":
        from dpiqa.engine.executor import choose_executor

        executor = (
            "local" if choose_executor("auto", address, shards, config.storage_options, "filter").in_process else "ray"
        )
    log.info(
        "filter: %d shards, %d already done, %d to do, %d without scores",
        len(shards.urls),
        skipped,
        len(todo),
        len(missing),
    )
    worker = ShardFilter(config.scores, config.output, cutoff, config.keys_only, digest, config.storage_options)
    tasks = {url: ShardTask(url, s.name, s.path) for url, s in pairs}
    job = FilterJob(worker, tasks, missing, executor, config.workers, address, out, cutoff, config.scores)
    settings = {k: v for k, v in asdict(config).items() if k != "storage_options"}
    return run_shard_job(job, shards, out, todo, skipped, settings, digest, retries=2, started=t0)


class FilterJob(ShardJob):
    """`filter` as a shard job: one `ShardFilter` call per shard, on a thread pool or as Ray Data tasks."""

    label = "filter"
    unit = "kept samples"

    def __init__(
        self,
        worker: ShardFilter,
        tasks: dict[str, ShardTask],
        missing: dict[str, str],
        executor: str,
        workers: int,
        address: str | None,
        out: OutputLocation,
        cutoff: Cutoff,
        scores: str,
    ) -> None:
        self.worker, self.tasks, self.missing, self.executor = worker, tasks, missing, executor
        self.workers, self.address, self.out, self.cutoff, self.scores = workers, address, out, cutoff, scores
        self.kept = self.refused = 0

    def process(self, shards: list[str], fact: Callable[[ShardFact], None], units: Callable[[int], None]) -> None:
        for url in shards:
            if url in self.missing:
                fact(ShardFact(url, "", error=self.missing[url]))
        todo = [self.tasks[u] for u in shards if u in self.tasks]
        run = (
            _run_local(self.worker, todo, self.workers)
            if self.executor == "local"
            else _run_ray(self.worker, todo, self.address)
        )
        for r in run:
            if r.error is None:
                self.kept += r.kept
                self.refused += r.refused
            fact(ShardFact(r.url, r.name, r.rows_scored, {"kept": r.kept, "refused": r.refused}, error=r.error))
            units(r.kept)

    def retryable(self, exc: BaseException) -> bool:
        from dpiqa.engine.executor.ray_data import is_ray_system_error

        return self.executor != "local" and is_ray_system_error(exc)

    def manifest(self, tally: Tally) -> dict:
        totals = {"kept": 0, "refused": 0}
        for marker in self.out.done().values():
            totals["kept"] += int(marker.get("kept", 0))
            totals["refused"] += int(marker.get("refused", 0))
        cutoff = self.cutoff
        return {
            "scores": self.scores,
            "cutoff": {
                "score": cutoff.score,
                "kept": cutoff.kept,
                "ok_rows": cutoff.total,
                "kept_at_cut": sum(cutoff.ties.values()) if cutoff.ties is not None else None,
            },
            "kept_this_run": self.kept,
            "refused_this_run": self.refused,
            **totals,
        }


def _remove_previous(out: OutputLocation) -> None:
    """Before `--overwrite`: remove the shards and key files the previous filter run wrote."""
    for name in out.done():
        for rel in (f"{name}.tar", f"{KEYS_DIR}/{name}.parquet"):
            out.remove(rel)


def _run_local(
    worker: Callable[[ShardTask], ShardResult], tasks: list[ShardTask], workers: int
) -> Iterable[ShardResult]:
    """Shards on a thread pool: the work is copying bytes between object-store streams (no decoding), so
    threads overlap the I/O latency and the GIL is released while they wait; processes would add nothing
    but pickling of the member bytes."""
    if not tasks:
        return
    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = [pool.submit(worker, t) for t in tasks]
        for future in as_completed(futures):
            yield future.result()


def _run_ray(worker: ShardFilter, tasks: list[ShardTask], address: str | None) -> Iterable[ShardResult]:
    """Shards as Ray Data tasks, one per shard (`from_items` + `map`): workers read and write the shards
    themselves; only each shard's small result comes back to the driver."""
    if not tasks:
        return
    import ray

    from dpiqa.engine.executor.ray_data import init_ray

    init_ray(address)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False

    def one(row: dict) -> dict:
        r = worker(ShardTask(**row))
        return {"result": json.dumps(asdict(r))}

    ds = ray.data.from_items([asdict(t) for t in tasks], override_num_blocks=len(tasks))
    for row in ds.map(one, num_cpus=0.5).iter_rows():
        yield ShardResult(**json.loads(row["result"]))
