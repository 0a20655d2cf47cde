"""`dpiqa filter` on the command line: killed part-way and rerun, options, exit status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from corpus import jpeg, write_shard
from scored import score_shards

from dpiqa.jobs.cli import main

REPO = Path(__file__).resolve().parents[2]
SHARDS, PER_SHARD = 3, 6


def build(root: Path) -> tuple[Path, str]:
    """Shards of large-ish members (a killed writer leaves a partial tar on disk) and their scores."""
    (root / "in").mkdir()
    urls = []
    for s in range(SHARDS):
        path = root / "in" / f"{s:05d}.tar"
        write_shard(
            path, [(f"s{s}_{i}", {"jpg": jpeg(s * 10 + i, size=(256, 200)), "txt": b"c"}) for i in range(PER_SHARD)]
        )
        urls.append(str(path))
    score_shards(urls, str(root / "scores"), lambda u, i, k: float(i))
    return root / "in", str(root / "scores")


def test_rerun_after_kill_completes_without_duplicates(tmp_path: Path) -> None:
    shards, scores = build(tmp_path)
    new = tmp_path / "new"
    argv = [
        "filter",
        "--scores",
        scores,
        "--input",
        str(shards),
        "--output",
        str(new),
        "--min-score",
        "1",
        "--executor",
        "local",
        "--workers",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # each member written sleeps 0.2 s (a sample is two members): the kill lands inside a shard
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "slow_tar_writes.py"), "0.2", *argv],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    half = None
    try:
        deadline = time.monotonic() + 60
        while half is None and time.monotonic() < deadline and proc.poll() is None:
            done = {p.stem for p in (new / "_done").glob("*.json")} if (new / "_done").exists() else set()
            partial = [p for p in new.glob("*.tar") if p.stem not in done and p.stat().st_size > 0]
            if done and partial:
                half = partial[0]
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert half is not None, "the run never had a finished and a half-written shard at once"
    done_before = {p.stem for p in (new / "_done").glob("*.json")}
    assert half.stem not in done_before and len(done_before) < SHARDS
    partial = half.read_bytes()

    assert main(argv) == 0
    manifest = json.loads((new / "manifest.json").read_text())
    assert manifest["shards"]["skipped_done"] == len(done_before)
    assert manifest["shards"]["written"] == SHARDS - len(done_before)
    # The output is deterministic, so the killed run's file is a strict prefix of the redone one.
    final = half.read_bytes()
    assert len(partial) < len(final) and final.startswith(partial)
    for s in range(SHARDS):
        keys = pq.read_table(new / "keys" / f"{s:05d}.parquet").column("key").to_pylist()
        assert keys == [f"s{s}_{i}" for i in range(1, PER_SHARD)]
        with tarfile.open(new / f"{s:05d}.tar") as tar, tarfile.open(shards / f"{s:05d}.tar") as original:
            names = [m.name for m in tar.getmembers()]
            for m in tar.getmembers():
                assert tar.extractfile(m).read() == original.extractfile(m.name).read()
        assert names == [f"s{s}_{i}.{ext}" for i in range(1, PER_SHARD) for ext in ("jpg", "txt")]  # no duplicates


def test_min_score_and_top_fraction_are_exclusive(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["filter", "--scores", "x", "--input", "y", "--output", "z", "--min-score", "1", "--top-fraction", "0.1"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_failed_shard_exits_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shards, scores = build(tmp_path)
    write_shard(shards / "00007.tar", [("x", {"jpg": jpeg(1)})])  # not scored
    code = main(
        [
            "filter",
            "--scores",
            scores,
            "--input",
            str(shards),
            "--output",
            str(tmp_path / "n"),
            "--top-fraction",
            "0.5",
            "--executor",
            "local",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert f"FAILED {shards / '00007.tar'}: no completed scores" in out
    assert "kept 9 samples" in out  # ceil(0.5 * 18 ok rows)
