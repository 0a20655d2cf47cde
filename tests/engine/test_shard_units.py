"""A shard is the unit of work and of failure: the product's own write order under crashes (failpoints in
`engine/stages/write.py`, the process killed there), a unit retried alone, a unit that always fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import corpus
import pyarrow.parquet as pq
import pytest
from test_pipeline import read_rows

from dpiqa import failpoints
from dpiqa.engine.executor.local import LocalExecutor
from dpiqa.engine.output import OutputLocation
from dpiqa.engine.pipeline import ScoreConfig, run_score

MODEL = "dpiqa-student-tiny"
SHARDS = 6
PER_SHARD = 5


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("units")
    corpus.write_corpus(d, shards=SHARDS, per_shard=PER_SHARD)
    return d


@pytest.fixture(scope="module")
def clean(shards, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("clean") / "out"
    result = run_score(ScoreConfig(input=str(shards), output=str(out), model=MODEL), LocalExecutor())
    assert result.exit_code == 0
    return read_rows(str(out))


def score_cli(shards: Path, out: Path, failpoint: str | None = None, *extra: str, timeout: float = 180):
    """`dpiqa score` in a process of its own (in this process, with one shard in flight at a time, so that the
    Nth pass of a failpoint is the Nth shard's), optionally with `DPIQA_FAILPOINTS` set."""
    env = {**os.environ, "DPIQA_FAILPOINTS": failpoint or ""}
    cmd = [sys.executable, "-m", "dpiqa.jobs.cli", "score", "--input", str(shards), "--output", str(out)]
    cmd += ["--model", MODEL, "--executor", "local", "--units-per-worker", "1", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def committed(out: Path) -> dict[str, int]:
    """Each marker's row count, after checking that its Parquet is there, complete, with as many rows."""
    rows = {}
    for marker in sorted((out / "_done").glob("*.json")):
        m = json.loads(marker.read_text())
        parquet = out / "scores" / f"{marker.stem}.parquet"
        assert parquet.exists(), f"marker {marker.name} is visible before its Parquet"
        assert pq.read_metadata(parquet).num_rows == m["rows"] == PER_SHARD, marker.name
        rows[marker.stem] = m["rows"]
    return rows


@pytest.mark.parametrize(
    "point, markers_after_crash",
    # inside the second shard's commit: before its Parquet, while moving it into place, after it, after its marker
    [("commit.before_parquet", 1), ("commit.file", 1), ("commit.after_parquet", 1), ("commit.after_marker", 2)],
)
def test_a_process_killed_inside_the_write_path_leaves_only_complete_shards_and_resumes_exactly(
    shards, clean, tmp_path, point, markers_after_crash
):
    out = tmp_path / "out"
    crashed = score_cli(shards, out, f"{point}=exit@2")
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    assert len(committed(out)) == markers_after_crash  # no marker without its complete Parquet
    names_done = {p.stem: p.stat().st_mtime_ns for p in (out / "_done").glob("*.json")}

    rerun = score_cli(shards, out)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    # Only the shards without a marker ran again: the one whose marker was written before the kill did not.
    assert manifest["shards"]["skipped_done"] == markers_after_crash
    assert manifest["shards"]["written"] == SHARDS - markers_after_crash
    assert {p.stem: p.stat().st_mtime_ns for p in (out / "_done").glob("*.json") if p.stem in names_done} == names_done
    assert len(committed(out)) == SHARDS
    assert read_rows(str(out)) == clean  # every sample exactly one row, as in a clean run


def test_a_unit_that_fails_once_runs_again_alone(shards, clean, tmp_path, monkeypatch):
    monkeypatch.setenv("DPIQA_FAILPOINTS", "unit.start=raise@3")  # the third unit started raises, once
    failpoints.reset()
    try:
        result = run_score(ScoreConfig(input=str(shards), output=str(tmp_path / "out"), model=MODEL), LocalExecutor())
    finally:
        monkeypatch.delenv("DPIQA_FAILPOINTS")
        failpoints.reset()
    assert result.exit_code == 0
    assert result.manifest["retries"]["units_started_again"] == 1
    assert result.manifest["retries"]["failed_attempts"] == 1
    assert read_rows(str(tmp_path / "out")) == clean


def test_a_unit_that_always_fails_ends_failed_after_its_retries(shards, clean, tmp_path):
    out = tmp_path / "out"
    doomed = "00002.tar"
    # Bounded by the timeout: with no retry limit the run would never end, and this test fails.
    r = score_cli(shards, out, f"unit.start=raise:match:{doomed}", "--retries", "2", timeout=120)
    assert r.returncode == 1, r.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    (failed_url, why), *others = manifest["failed_shards"].items()
    assert not others and failed_url.endswith(doomed) and "failed 3 attempts" in why
    assert manifest["retries"]["failed_attempts"] == 3 and manifest["retries"]["units_started_again"] == 1
    assert doomed in r.stderr  # the failed shard is listed
    assert not (out / "_done" / "00002.json").exists() and not (out / "scores" / "00002.parquet").exists()
    assert manifest["shards"]["written"] == SHARDS - 1
    assert read_rows(str(out)) == [row for row in clean if not row["shard"].endswith(doomed)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_leaves_its_record_and_the_rerun_includes_its_shards(shards, clean, tmp_path, sig):
    """Ctrl-C or SIGTERM: the shards finished so far keep their markers, the run's record says it was
    interrupted, and the rerun's record names it (`resumes`), so `audit --run latest` sees the whole night."""
    out = tmp_path / "out"
    # the third unit waits 10 s before it starts: two shards are done and the signal comes while the third waits,
    # however slowly this test polls on a busy machine (with a short wait per unit the run could end first)
    env = {**os.environ, "DPIQA_FAILPOINTS": "unit.start=sleep:10@3"}
    cmd = [sys.executable, "-m", "dpiqa.jobs.cli", "score", "--input", str(shards), "--output", str(out)]
    cmd += ["--model", MODEL, "--executor", "local", "--units-per-worker", "1"]
    # Ctrl-C's default action in the child, as in a terminal: a suite started in the background (nohup, `&` in a
    # script) hands its children SIGINT ignored, and Python then keeps ignoring it (the run would just finish)
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(list(out.glob("_done/*.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), stderr[-2000:]
    first = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    assert len(first) == 1 and first[0]["interrupted"] is True
    done_first = len(list(out.glob("_done/*.json")))
    assert 2 <= done_first < SHARDS and first[0]["shards"]["written"] == done_first

    rerun = score_cli(shards, out)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    assert records[-1]["resumes"] == [first[0]["run_id"]]
    assert len(OutputLocation(str(out)).run_shard_names(records[-1])) == SHARDS
    assert read_rows(str(out)) == clean


def test_the_writer_refuses_a_row_repeated_or_out_of_order(tmp_path):
    """Every sample becomes exactly one row: a batch handed twice (a reader that re-read from a wrong offset)
    or out of order fails the unit (which then runs again from the start) instead of writing duplicates."""
    import numpy as np

    from dpiqa.engine import schema
    from dpiqa.engine.stages.write import ShardWriter

    out = OutputLocation(str(tmp_path / "out"))

    def batch(indices):
        n = len(indices)
        return {
            "shard": np.array(["a.tar"] * n, dtype=object),
            "index": np.array(indices, dtype=np.int64),
            "key": np.array([f"k{i}" for i in indices], dtype=object),
            "status": np.array(["ok"] * n, dtype=object),
            "error": np.array([None] * n, dtype=object),
            "score": np.ones(n, dtype=np.float32),
            "width": np.ones(n, dtype=np.int32),
            "height": np.ones(n, dtype=np.int32),
        }

    writer = ShardWriter(out, "a.tar", "a", schema.SCORES_SCHEMA, None, "m", "h")
    assert writer.add(batch([0, 1])) == 2
    with pytest.raises(ValueError, match="rows out of order"):
        writer.add(batch([0, 1]))
    with pytest.raises(ValueError, match="rows out of order"):
        writer.add(batch([3]))
    writer.discard()
    assert not list((tmp_path / "out").rglob("*.parquet")) and not list((tmp_path / "out").rglob("*.tmp"))
