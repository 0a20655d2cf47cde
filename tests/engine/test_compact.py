"""`dpiqa compact`: the parts hold exactly the scored rows (counted by DuckDB), `score` keeps the shards done,
`audit`, `filter` and distillation's teacher outputs read both forms alike, and a compaction killed at each of
its steps and run again loses and duplicates nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from clirun import dpiqa
from corpus import good_samples, write_shard

from dpiqa.engine.audit import AuditConfig, run_audit
from dpiqa.engine.filter import FilterConfig, run_filter
from dpiqa.engine.training.data import TeacherOutputs

REPO = Path(__file__).resolve().parents[2]
COLUMNS = ["shard", "index", "key", "score", "status", "error", "width", "height", "model"]
# Parts of a few KB, row groups of about 10 rows: every output below is several parts of several row groups,
# and a row group or a part never splits a shard.
SMALL = ["--target-mb", "0.004", "--row-group-rows", "10"]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Seven shards in two folders scored by `dpiqa score` (a real model, with maps); one sample has no image."""
    root = tmp_path_factory.mktemp("compact")
    for s in range(7):
        folder = root / "shards" / ("a" if s < 3 else "b")  # a/00002 and b/00003 share a row group
        folder.mkdir(parents=True, exist_ok=True)
        samples = good_samples(f"s{s}_", 6 + s, seed=s)
        if s == 2:
            samples.insert(3, (f"s{s}_noimage", {"txt": b"caption only"}))
        write_shard(folder / f"{s:05d}.tar", samples)
    out = dpiqa(*score_args(root / "shards", root / "plain"))
    assert out.returncode == 0, out.stderr[-2000:]
    return root / "shards", root / "plain"


def score_args(shards: Path, output: Path) -> list[str]:
    return [
        "score",
        "--input",
        str(shards),
        "--output",
        str(output),
        "--model",
        "dpiqa-student-tiny",
        "--write-maps",
        "--executor",
        "local",
    ]


@pytest.fixture(scope="module")
def compacted(plain: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compacted") / "out"
    shutil.copytree(plain[1], out)
    result = dpiqa("compact", "--scores", str(out), *SMALL)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "compacted 7 shards (64 rows) into" in result.stdout and "markers kept" in result.stdout
    return out


def rows_of(files: str | list[str]) -> list[tuple]:
    """Every row (as a tuple of COLUMNS), sorted: a multiset to compare for loss and duplication."""
    con = duckdb.connect()
    return sorted(con.execute(f"SELECT {', '.join(COLUMNS)} FROM read_parquet({files!r})").fetchall())


def manifests(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "compacted").glob("_part-*.json"))]


def test_parts_hold_exactly_the_scored_rows(plain: tuple[Path, Path], compacted: Path) -> None:
    _, out = plain
    before = rows_of(str(out / "scores" / "*.parquet"))
    parts = manifests(compacted)
    con = duckdb.connect()
    counted = con.execute(f"SELECT count(*) FROM '{compacted}/compacted/*.parquet'").fetchone()[0]
    markers = [json.loads(p.read_text()) for p in (compacted / "_done").glob("*.json")]
    assert counted == sum(p["rows"] for p in parts) == len(before) == sum(m["rows"] for m in markers) == 64
    assert rows_of(str(compacted / "compacted" / "*.parquet")) == before  # nothing lost, nothing twice
    assert len(parts) > 1 and max(len(p["shards"]["name"]) for p in parts) > 1
    listed = [n for p in parts for n in p["shards"]["name"]]
    assert sorted(listed) == sorted(p.stem for p in (out / "scores").glob("*.parquet"))  # each shard once
    assert not list((compacted / "scores").glob("*.parquet"))  # replaced...
    assert sorted(p.name for p in (compacted / "_done").iterdir()) == sorted(p.name for p in (out / "_done").iterdir())
    assert len(list((compacted / "maps").glob("*.parquet"))) == 7  # ...scores only: maps stay per shard

    for p in parts:
        f = pq.ParquetFile(compacted / "compacted" / p["file"])
        assert f.metadata.num_rows == p["rows"] and os.path.getsize(compacted / "compacted" / p["file"]) == p["bytes"]
        table = f.read(columns=["shard", "index"])
        keys = list(zip(table.column("shard").to_pylist(), table.column("index").to_pylist(), strict=True))
        assert keys == sorted(keys)  # sorted by shard URL, then index
        start = 0
        for url, rows, offset in zip(*(p["shards"][k] for k in ("url", "rows", "offset")), strict=True):
            assert offset == start and set(table.column("shard").to_pylist()[offset : offset + rows]) == {url}
            start += rows
        first = 0  # a row group never splits a shard: the shard changes at every row group boundary
        for g in range(f.metadata.num_row_groups - 1):
            first += f.metadata.row_group(g).num_rows
            assert keys[first - 1][0] != keys[first][0]


def test_score_again_on_the_compacted_output_scores_nothing(plain: tuple[Path, Path], compacted: Path) -> None:
    shards, _ = plain
    out = dpiqa(*score_args(shards, compacted))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "scored 0 rows from 0 shards" in out.stdout and "7 already done" in out.stdout
    assert not list((compacted / "scores").glob("*.parquet"))


def without_files_and_times(doc: dict) -> dict:
    doc = json.loads(json.dumps(doc))
    for key in ("generated", "scores", "code_version"):
        doc.pop(key)
    doc["per_shard_table"].pop("file")
    return doc


@pytest.mark.parametrize("under", [None, "a"])
def test_audit_of_both_forms_is_the_same(
    plain: tuple[Path, Path], compacted: Path, tmp_path: Path, under: str | None
) -> None:
    """The same document from the per-shard files and from the parts, for every shard and for a folder (whose
    shards share parts and row groups with the other folder's)."""
    docs, tables = [], []
    for name, out in (("plain", plain[1]), ("compacted", compacted)):
        json_path = tmp_path / f"{name}.json"
        run_audit(AuditConfig(scores=str(out), json=str(json_path), under=under, thumbnails=3, history=False))
        docs.append(without_files_and_times(json.loads(json_path.read_text())))
        tables.append(pq.read_table(tmp_path / f"{name}.shards.parquet"))
    assert docs[0] == docs[1]
    assert tables[0].equals(tables[1])
    assert docs[1]["summary"]["rows"] == (64 if under is None else 6 + 7 + 8 + 1)
    assert [t["error"] for t in docs[1]["thumbnails"]["lowest"]] == [None] * 3  # keys found in the parts


def test_filter_of_both_forms_keeps_the_same_samples(plain: tuple[Path, Path], compacted: Path, tmp_path: Path) -> None:
    shards, _ = plain
    kept = []
    for name, out in (("plain", plain[1]), ("compacted", compacted)):
        result = run_filter(
            FilterConfig(scores=str(out), input=str(shards), output=str(tmp_path / name), top_fraction=0.4),
            executor="local",
        )
        assert result.exit_code == 0, result.failed
        kept.append(pq.read_table(tmp_path / name / "keys").sort_by([("shard", "ascending"), ("index", "ascending")]))
        members = sorted(m for tar in sorted((tmp_path / name).glob("*.tar")) for m in _members(tar))
        kept.append(members)
    assert kept[0].equals(kept[2]) and kept[0].num_rows == 26  # ceil(0.4 x 63 ok rows)
    assert kept[1] == kept[3] and len(kept[1]) == 26 * 2  # jpg and txt


def _members(tar: Path) -> list[str]:
    import tarfile

    with tarfile.open(tar) as t:
        return [f"{tar.name}/{m.name}" for m in t.getmembers()]


def test_teacher_outputs_of_both_forms_are_the_same(plain: tuple[Path, Path], compacted: Path) -> None:
    before, after = TeacherOutputs(str(plain[1])), TeacherOutputs(str(compacted))
    urls = sorted(before.shards)
    assert urls == sorted(after.shards) and len(urls) == 7
    for url in urls:
        rows = before.rows(url)
        assert rows == after.rows(url) and len(rows) >= 6


@pytest.mark.parametrize(
    ("point", "left"),
    [
        # inside Spool.commit: the part not yet at its name (slow: each case is two cold `dpiqa` processes)
        pytest.param("commit.file=exit@2", "a spool file", marks=pytest.mark.slow),
        ("compact.after_part=exit@2", "a part without its manifest"),
        ("compact.after_manifest=exit@2", "per-shard files of a complete part"),
        pytest.param("compact.after_delete=exit@1", "nothing out of place", marks=pytest.mark.slow),
    ],
)
def test_compaction_killed_and_run_again_loses_and_duplicates_nothing(
    plain: tuple[Path, Path], tmp_path: Path, point: str, left: str
) -> None:
    """A real process killed (os._exit, as SIGKILL leaves it) at a step of its commit order, then run again."""
    out = tmp_path / "out"
    shutil.copytree(plain[1], out)
    before = rows_of(str(plain[1] / "scores" / "*.parquet"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "DPIQA_FAILPOINTS": point}
    cmd = [sys.executable, "-m", "dpiqa.jobs.cli", "compact", "--scores", str(out), *SMALL]
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == 137, killed.stderr[-2000:]
    parquet = {p.stem for p in (out / "compacted").glob("part-*.parquet")}
    complete = {p.stem[1:] for p in (out / "compacted").glob("_part-*.json")}
    in_parts = {n for m in manifests(out) for n in m["shards"]["name"]}
    own = {p.stem for p in (out / "scores").glob("*.parquet")}
    if left == "a spool file":
        assert list((out / "compacted").glob(".part-*.tmp")) and parquet == complete
    elif left == "a part without its manifest":
        assert parquet - complete  # a reader ignores it: no manifest
    elif left == "per-shard files of a complete part":
        assert parquet == complete and own & in_parts
    else:
        assert parquet == complete and not own & in_parts
    assert own | in_parts == {p.stem for p in (out / "_done").glob("*.json")}  # every shard readable somewhere

    env.pop("DPIQA_FAILPOINTS")
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert rows_of(str(out / "compacted" / "*.parquet")) == before
    assert sum(m["rows"] for m in manifests(out)) == len(before)
    names = [n for m in manifests(out) for n in m["shards"]["name"]]
    assert len(names) == len(set(names)) == 7
    assert {p.stem for p in (out / "compacted").glob("part-*.parquet")} == {
        p.stem[1:] for p in (out / "compacted").glob("_part-*.json")
    }
    assert not list((out / "scores").glob("*.parquet")) and not list((out / "compacted").glob(".*"))


def test_a_shard_file_that_disagrees_with_its_marker_stops_compaction_and_loses_nothing(
    plain: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(plain[1], out)
    victim = out / "scores" / "b__00005.parquet"
    pq.write_table(pq.read_table(victim).slice(0, 3), victim)  # cut short by something else than us
    result = dpiqa("compact", "--scores", str(out), *SMALL)
    assert result.returncode == 4
    line = result.stderr.strip().splitlines()[-1]
    assert "b__00005.parquet: 3 rows" in line and "marker states 11" in line
    assert not list((out / "compacted").glob(".*"))  # the part in flight discarded, not left behind
    assert (
        victim.exists()
        and len(list((out / "scores").glob("*.parquet"))) + sum(len(m["shards"]["name"]) for m in manifests(out)) == 7
    )


def test_help_and_an_output_without_shards() -> None:
    out = dpiqa("compact", "--help")
    assert out.returncode == 0
    for text in ("--target-mb", "--scores", "_part-K.json", "markers", "nothing else writes", "DuckDB"):
        assert text in " ".join(out.stdout.split()), text
    empty = dpiqa("compact", "--scores", "/nonexistent/dpiqa-out")
    assert empty.returncode == 4 and "no completed shard" in empty.stderr


@pytest.mark.slow  # a second `dpiqa score` run
def test_score_overwrite_after_compaction_reads_and_compacts_the_new_scores(
    plain: tuple[Path, Path], compacted: Path, tmp_path: Path
) -> None:
    """`score --overwrite` leaves the old parts behind (it knows nothing of them): readers take each shard's new
    file, not its old rows in a part, and the next compaction deletes the parts no shard is read from."""
    from dpiqa.engine.scores import ScoredRun

    shards, _ = plain
    out = tmp_path / "out"
    shutil.copytree(compacted, out)
    old_parts = {p.name for p in (out / "compacted").iterdir()}
    rescored = dpiqa(*score_args(shards, out), "--overwrite")
    assert rescored.returncode == 0, rescored.stderr[-2000:]
    new_rows = rows_of(str(out / "scores" / "*.parquet"))
    run = ScoredRun(str(out))
    assert run.compacted == 0 and all(s.offset is None for s in run.shards)
    assert sorted(r for _, b in run.batches(COLUMNS) for r in zip(*b.to_pydict().values(), strict=True)) == new_rows

    again = dpiqa("compact", "--scores", str(out), *SMALL)
    assert again.returncode == 0, again.stderr[-2000:]
    assert rows_of(str(out / "compacted" / "*.parquet")) == new_rows
    assert sum(m["rows"] for m in manifests(out)) == len(new_rows) == 64
    assert ScoredRun(str(out)).compacted == 7 and not list((out / "scores").glob("*.parquet"))
    assert old_parts  # the old parts were replaced, not added to


def test_the_audit_scan_on_ray_reads_the_parts(
    plain: tuple[Path, Path], compacted: Path, ray_local, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cluster scan (units of about ROWS_PER_TASK rows, `ScanWorker`) over a compacted output, whose units
    split parts between workers, gives the document of the per-shard files scanned in one process."""
    from test_audit import assert_same

    from dpiqa.engine.audit import scan as audit_scan

    monkeypatch.setattr(audit_scan, "ROWS_PER_TASK", 15)  # units of two or three shards: parts split among them
    docs = [
        run_audit(AuditConfig(scores=str(out), thumbnails=2, executor=executor)).doc
        for out, executor in ((compacted, "ray"), (plain[1], "local"))
    ]
    for doc in docs:
        for key in ("generated", "scores"):
            doc.pop(key)
    assert_same(docs[0], docs[1])
    assert docs[0]["summary"]["rows"] == 64


def test_compaction_on_s3_and_the_readers_there(s3: tuple[str, dict], plain: tuple[Path, Path], tmp_path: Path) -> None:
    """On an object store: parts uploaded whole, the prefix listed, per-shard objects deleted in bulk; the audit
    reads the parts through s3fs and gives the local per-shard audit's document."""
    import s3fs

    from dpiqa.engine.compact import CompactConfig, compact

    bucket, options = s3
    fs = s3fs.S3FileSystem(**options)
    url = f"s3://{bucket}/scores"
    fs.put(str(plain[1]) + "/", url, recursive=True)
    result = compact(CompactConfig(url, target_mb=0.004, row_group_rows=10, storage_options=options))
    assert result.shards == 7 and result.rows == 64 and len(result.parts) > 1
    fs.invalidate_cache()
    assert not fs.glob(f"{url}/scores/*.parquet") and len(fs.glob(f"{url}/_done/*.json")) == 7
    counted = sum(pq.ParquetFile(fs.open(p, "rb")).metadata.num_rows for p in fs.glob(f"{url}/compacted/*.parquet"))
    assert counted == 64
    docs = [
        run_audit(AuditConfig(scores=where, thumbnails=0, storage_options=opts)).doc
        for where, opts in ((url, options), (str(plain[1]), None))
    ]
    for doc in docs:
        for key in ("generated", "scores"):
            doc.pop(key)
    assert docs[0] == docs[1]
    assert compact(CompactConfig(url, storage_options=options)).shards == 0  # nothing left to do


def test_score_with_compact_merges_at_the_end_and_not_after_a_failed_shard(
    plain: tuple[Path, Path], tmp_path: Path
) -> None:
    """`score --compact`: with every shard done, the run ends compacted (the same rows as the plain run, no
    per-shard score file left); with a shard failed it says so and leaves the output uncompacted, and the rerun
    without that shard compacts everything."""
    shards = tmp_path / "shards"
    shutil.copytree(plain[0], shards)
    junk = shards / "b" / "junk.tar"
    junk.write_bytes(b"\x00\x01junk" * 1000)  # a .tar that is no tar: its shard fails
    out = tmp_path / "out"
    first = dpiqa(*score_args(shards, out), "--compact")
    assert first.returncode == 1, first.stderr[-2000:]
    assert "not compacted: 1 shard(s) failed" in first.stdout
    assert not (out / "compacted").exists() and len(list((out / "scores").rglob("*.parquet"))) == 7
    junk.unlink()
    second = dpiqa(*score_args(shards, out), "--compact")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "compacted 7 shards (64 rows) into" in second.stdout
    assert not list((out / "scores").rglob("*.parquet"))
    here = [(Path(r[0]).relative_to(shards), *r[1:]) for r in rows_of(str(out / "compacted" / "*.parquet"))]
    before = [
        (Path(r[0]).relative_to(plain[0]), *r[1:]) for r in rows_of(str(plain[1] / "scores" / "**" / "*.parquet"))
    ]
    assert here == before and len(here) == 64
