"""`dpiqa score` as a user runs it: help, progress lines, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import corpus

REPO = Path(__file__).resolve().parents[2]


def dpiqa(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dpiqa.jobs.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )


def test_help_lists_the_options():
    out = dpiqa("score", "--help")
    assert out.returncode == 0
    for option in ("--input", "--output", "--model", "--batch-size", "--device", "--overwrite", "--address"):
        assert option in out.stdout


def test_progress_lines_and_summary(tmp_path):
    (tmp_path / "in").mkdir()
    corpus.write_corpus(tmp_path / "in", shards=3, per_shard=5)
    out = dpiqa(
        "score",
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "o"),
        "--model",
        "dpiqa-student-tiny",
        "--executor",
        "local",
    )
    assert out.returncode == 0, out.stderr
    progress = [line for line in out.stderr.splitlines() if "dpiqa.progress" in line]
    assert progress and "score: 3/3 shards done, 15 images" in progress[-1] and "images/s" in progress[-1]
    assert "scored 15 rows from 3 shards: 15 ok, 0 errors; shards: 0 already done, 0 failed" in out.stdout
    assert "dpiqa audit" not in out.stdout  # no errors worth a look


def test_final_line_says_how_many_rows_are_errors_and_points_at_audit(tmp_path):
    (tmp_path / "in").mkdir()
    samples = corpus.good_samples("k", 4) + [(f"t{i}", {"txt": b"caption only"}) for i in range(5)]
    samples += [("k0000", {"jpg": corpus.jpeg(9)})]  # a duplicate key
    corpus.write_shard(tmp_path / "in" / "00000.tar", samples)
    out = dpiqa(
        "score",
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "o"),
        "--model",
        "dpiqa-student-tiny",
        "--executor",
        "local",
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == (
        f"scored 10 rows from 1 shards: 4 ok, 6 errors (5 no_image, 1 duplicate_key); "
        f"shards: 0 already done, 0 failed -> {tmp_path / 'o'}"
    )
    assert lines[1].startswith("60% of these rows are errors: `dpiqa audit --scores ")


def test_failed_shard_exit_code_lists_it(tmp_path):
    corpus.write_corpus(tmp_path, shards=2, per_shard=3)
    (tmp_path / "junk.tar").write_bytes(b"\x00\x01junk" * 1000)  # a .tar that is no tar
    urls = [str(tmp_path / "00000.tar"), str(tmp_path / "00001.tar"), str(tmp_path / "junk.tar")]
    (tmp_path / "urls.txt").write_text("\n".join(urls))
    out = dpiqa(
        "score",
        "--input",
        str(tmp_path / "urls.txt"),
        "--output",
        str(tmp_path / "o"),
        "--model",
        "dpiqa-student-tiny",
        "--executor",
        "local",
    )
    assert out.returncode == 1
    assert f"FAILED {tmp_path / 'junk.tar'}: not a tar archive" in out.stdout
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["shards"]["written"] == 2 and list(manifest["failed_shards"]) == [urls[2]]


def test_bad_arguments_get_one_line_errors(tmp_path):
    out = dpiqa(
        "score",
        "--input",
        str(tmp_path / "nothing-here"),
        "--output",
        str(tmp_path / "o"),
        "--model",
        "dpiqa-student-tiny",
        "--executor",
        "local",
    )
    assert out.returncode == 4
    assert out.stderr.strip().splitlines()[-1].startswith("dpiqa score: error: ")
    assert "nothing-here" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "in").mkdir()
    corpus.write_corpus(tmp_path / "in", shards=1, per_shard=2)
    out = dpiqa(
        "score",
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "o"),
        "--model",
        str(tmp_path / "no-model"),
        "--executor",
        "local",
    )
    assert out.returncode == 4 and "no-model" in out.stderr and "Traceback" not in out.stderr


def test_an_s3_endpoint_with_nothing_listening_fails_at_once_in_one_line(tmp_path):
    from conftest import free_port

    port = free_port()  # nothing listens there
    t0 = __import__("time").monotonic()
    out = dpiqa(
        "score",
        "--input",
        "s3://bucket/corpus/",
        "--output",
        str(tmp_path / "o"),
        "--storage-options",
        json.dumps({"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}}),
        "--executor",
        "local",
    )
    assert out.returncode == 4 and "Traceback" not in out.stderr
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith(f"dpiqa score: error: cannot reach the object store at http://127.0.0.1:{port}")
    )
    assert __import__("time").monotonic() - t0 < 60  # not botocore's minute of retries


def test_sigterm_ends_the_run_cleanly_and_leaves_no_ray_process(tmp_path):
    """A scheduler's SIGTERM to the driver: exit 143 with one line saying how to resume, and every process
    the driver started (Ray's head processes, workers, actors) gone."""
    import os
    import signal
    import subprocess
    import time

    import psutil

    (tmp_path / "in").mkdir()
    corpus.write_corpus(tmp_path / "in", shards=6, per_shard=40)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dpiqa.jobs.cli",
            "score",
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(tmp_path / "o"),
            "--model",
            "dpiqa-student-small",
            "--executor",
            "ray",
            "--threads",
            "1",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    driver = psutil.Process(proc.pid)
    deadline = time.monotonic() + 240
    started: list[psutil.Process] = []
    while time.monotonic() < deadline and proc.poll() is None:
        started = driver.children(recursive=True)
        if (
            any("raylet" in " ".join(p.cmdline()) for p in started if p.is_running())
            and (tmp_path / "o" / "_run.json").exists()
        ):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be stopped"
    time.sleep(2)
    started = driver.children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "terminated; rerun the same command to resume" in err
    time.sleep(3)
    alive = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [" ".join(p.cmdline())[:120] for p in alive]
