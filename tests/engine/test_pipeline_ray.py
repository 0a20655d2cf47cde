"""The scoring run on a real local Ray: same rows as the local loop, S3 in and out, kill and resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import corpus
import fsspec
import pytest
from clirun import dpiqa
from test_pipeline import MODEL, read_rows

from dpiqa.engine.executor.local import LocalExecutor
from dpiqa.engine.executor.ray_actors import RayExecutor
from dpiqa.engine.pipeline import ScoreConfig, run_score
from dpiqa.models.student import DPIQAStudent, StudentConfig

REPO = Path(__file__).resolve().parents[2]


def test_ray_run_equals_local_run(ray_local, tmp_path):
    shards = tmp_path / "in"
    shards.mkdir()
    corpus.write_corpus(shards, shards=4, per_shard=9)
    local = run_score(ScoreConfig(input=str(shards), output=str(tmp_path / "a"), model=MODEL), LocalExecutor())
    distributed = run_score(
        ScoreConfig(
            input=f"{shards}/{{00000..00003}}.tar", output=str(tmp_path / "b"), model=MODEL, batch_size=4, chunk_size=5
        ),
        RayExecutor(),
    )
    assert local.exit_code == distributed.exit_code == 0
    a, b = read_rows(str(tmp_path / "a")), read_rows(str(tmp_path / "b"))
    assert len(a) == len(b) == 36
    for x, y in zip(a, b, strict=True):
        assert (x["shard"], x["index"], x["key"], x["status"]) == (y["shard"], y["index"], y["key"], y["status"])
        assert x["score"] == pytest.approx(y["score"], rel=1e-5)


def test_s3_in_and_out_with_resume(ray_local, s3, tmp_path):
    bucket, options = s3
    fs = fsspec.filesystem("s3", **options)
    for path in corpus.write_corpus(tmp_path, shards=3, per_shard=6):
        fs.put(path, f"{bucket}/shards/{Path(path).name}")
    config = ScoreConfig(
        input=f"s3://{bucket}/shards/", output=f"s3://{bucket}/scores", model=MODEL, storage_options=options
    )
    first = run_score(config, RayExecutor())
    assert first.exit_code == 0 and first.manifest["rows"] == 18
    rows = read_rows(f"s3://{bucket}/scores", options)
    assert {r["shard"] for r in rows} == {f"s3://{bucket}/shards/{i:05d}.tar" for i in range(3)}
    fs.rm(f"{bucket}/scores/_done/00001.json")  # as if killed before this shard finished
    again = run_score(config, RayExecutor())
    assert again.manifest["shards"] == {"total": 3, "skipped_done": 2, "written": 1, "failed": 0}
    assert read_rows(f"s3://{bucket}/scores", options) == rows


def medium_checkpoint(path: Path) -> str:
    """A student big enough that scoring takes seconds on 2 cores, saved and loaded like a real one."""
    import torch

    torch.manual_seed(0)
    DPIQAStudent(
        StudentConfig(backbone="efficientnet_b0", image_size=128, map_size=16, head_hidden=64)
    ).save_pretrained(str(path))
    return str(path)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dpiqa.jobs.cli", "score", *args]


@pytest.mark.slow  # a SIGKILL and a rerun: `make test` and CI run it (RUN_SLOW=1)
def test_sigkill_half_way_then_rerun_equals_uninterrupted(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    corpus.write_corpus(shards, shards=12, per_shard=24)
    model = medium_checkpoint(tmp_path / "ckpt")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # one torch thread: with several, OpenMP's spin-waiting makes a busy 2-core machine crawl
    common = ["--input", str(shards), "--model", model, "--batch-size", "8", "--device", "cpu", "--threads", "1"]

    # the uninterrupted run needs no process of its own: in this one, without Ray
    clean = dpiqa("score", *common, "--output", str(tmp_path / "clean"), "--executor", "local")
    assert clean.returncode == 0, clean.stderr[-2000:]

    out = tmp_path / "killed"
    log = tmp_path / "killed.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            cli(*common, "--output", str(out), "--executor", "ray"),  # auto would run a job this small without Ray
            env=env,
            cwd=REPO,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not list((out / "_done").glob("*.json")):
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before the kill:\n{log.read_text()[-3000:]}"
    assert time.monotonic() < deadline, f"no shard finished in 240 s:\n{log.read_text()[-3000:]}"
    import psutil

    family = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and every Ray process it started
    for p in family:  # Ray's workers may sit in other process groups: they must not outlive the kill
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    psutil.wait_procs(family, timeout=30)
    done_at_kill = len(list((out / "_done").glob("*.json")))
    assert 1 <= done_at_kill < 12, f"kill landed after {done_at_kill} of 12 shards; the test needs half-way"

    rerun = subprocess.run(
        cli(*common, "--output", str(out), "--executor", "ray"), env=env, cwd=REPO, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"shards: {done_at_kill} already done, 0 failed" in rerun.stdout
    # a normal run on Ray logs our lines only: none of Ray's INFO lines, deprecation warnings or ERROR lines
    assert "Started a local Ray" not in rerun.stderr and "started a local Ray" in rerun.stderr
    theirs = [line for line in rerun.stderr.splitlines() if not re.match(r"\d\d:\d\d:\d\d (INFO|WARNING) dpiqa", line)]
    assert not theirs, theirs
    clean, resumed = read_rows(str(tmp_path / "clean")), read_rows(str(out))
    assert len(resumed) == 12 * 24 == len({(r["shard"], r["key"]) for r in resumed})
    assert [(r["shard"], r["index"], r["key"]) for r in resumed] == [(r["shard"], r["index"], r["key"]) for r in clean]
    for a, b in zip(clean, resumed, strict=True):
        assert a["score"] == pytest.approx(b["score"], rel=1e-5)


def score_on_ray(shards: Path, out: Path, failpoint: str, *extra: str) -> subprocess.CompletedProcess:
    """`dpiqa score --executor ray` in a process of its own (a local Ray of its own, whose workers inherit
    `DPIQA_FAILPOINTS`)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "DPIQA_FAILPOINTS": failpoint}
    cmd = cli("--input", str(shards), "--output", str(out), "--model", MODEL, "--executor", "ray", *extra)
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # two local Rays of their own
def test_a_worker_that_dies_or_hangs_costs_only_its_units_and_a_failed_setup_stops_the_run(tmp_path):
    shards = tmp_path / "in"
    shards.mkdir()
    corpus.write_corpus(shards, shards=6, per_shard=5)
    clean = run_score(ScoreConfig(input=str(shards), output=str(tmp_path / "clean"), model=MODEL), LocalExecutor())
    assert clean.exit_code == 0

    # The worker process dies (os._exit) as it starts the shard 00003, once: Ray's actor is lost with the units
    # it held; a new worker takes its place and the lost units run again, alone.
    once = tmp_path / "died-once"
    r = score_on_ray(shards, tmp_path / "out", f"unit.start=exit:match:00003:once:{once}")
    assert once.exists(), "the worker did not die: the test tested nothing"
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    retries = manifest["retries"]
    assert retries["workers_lost"] == 1 and 1 <= retries["units_in_flight_on_lost_workers"] <= 2, retries
    assert retries["units_started_again"] == retries["units_in_flight_on_lost_workers"], retries
    assert manifest["shards"]["written"] == 6
    a, b = read_rows(str(tmp_path / "clean")), read_rows(str(tmp_path / "out"))
    assert len(b) == 30 == len({(x["shard"], x["index"]) for x in b})
    assert [(x["shard"], x["index"], x["key"], x["status"]) for x in a] == [
        (x["shard"], x["index"], x["key"], x["status"]) for x in b
    ]

    # A unit that hangs (here: sleeps, once, as it starts shard 00004) makes its worker count as hung after
    # --hang-seconds: the worker is replaced and its units run again; the run ends complete.
    once = tmp_path / "hung-once"
    r = score_on_ray(shards, tmp_path / "hung", f"unit.start=sleep:600:match:00004:once:{once}", "--hang-seconds", "5")
    assert once.exists() and r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((tmp_path / "hung" / "manifest.json").read_text())
    assert manifest["retries"]["workers_hung"] == 1 and manifest["shards"]["written"] == 6, manifest["retries"]
    assert "processed nothing for" in r.stderr
    assert read_rows(str(tmp_path / "hung")) == b

    # A worker whose setup fails (as a model that cannot load would) stops the run with one line, exit 4.
    r = score_on_ray(shards, tmp_path / "setup", "worker.setup=raise")
    assert r.returncode == 4, r.stderr[-3000:]
    assert "its workers could not start" in r.stderr and "FailpointError" in r.stderr
    assert "Traceback" not in r.stderr
