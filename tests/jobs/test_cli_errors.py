"""Every bad option and bad input on the command line: one line naming what is wrong, no traceback, and
nothing written; exit status 2 for a usage error (the options can never work), 4 for what the command met before
it could run (files, storage, output; dpiqa/errors.py), never 1, the status of a run with failed shards. Run in-process (`dpiqa.jobs.cli.main`), as the entry point runs it."""

from __future__ import annotations

import json
from pathlib import Path

import corpus
import pytest
from clirun import last_line, run

TINY = ["--model", "dpiqa-student-tiny", "--executor", "local"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("in")
    corpus.write_corpus(d, shards=2, per_shard=3)
    return d


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["score", "--batch-size", "-1"], "argument --batch-size: must be an integer >= 1, not '-1'"),
        (["score", "--batch-size", "0"], "argument --batch-size: must be an integer >= 1, not '0'"),
        (["score", "--max-pixels", "-5"], "argument --max-pixels: must be an integer >= 1"),
        (["score", "--workers", "0"], "argument --workers"),
        (["score", "--threads", "two"], "argument --threads: must be an integer >= 1, not 'two'"),
        (["score", "--storage-options", "[1]"], "argument --storage-options: must be a JSON object"),
        (["score", "--storage-options", "{nope"], "argument --storage-options: must be a JSON object"),
        (["audit", "--max-error-rate", "nan"], "argument --max-error-rate: must be a number from 0 to 1, not 'nan'"),
        (["audit", "--max-error-rate", "1.5"], "argument --max-error-rate"),
        (["audit", "--max-drift", "-1"], "argument --max-drift: must be a number >= 0"),
        (["audit", "--thumbnails", "-2"], "argument --thumbnails"),
        (["filter", "--top-fraction", "0"], "argument --top-fraction: must be a number above 0 and at most 1"),
        (["filter", "--top-fraction", "inf"], "argument --top-fraction"),
        (["filter", "--min-score", "nan"], "argument --min-score: must be a finite number"),
        (["filter", "--workers", "0"], "argument --workers"),
        (["distill", "--epochs", "0"], "argument --epochs"),
        (["train-teacher", "--lr=-1e-4"], "argument --lr: must be a number > 0"),
        (["train-teacher", "--workers", "0"], "argument --workers"),
    ],
)
def test_bad_numbers_and_options_are_usage_errors(capsys, tmp_path, argv, says):
    required = {
        "score": ["--input", "x", "--output", str(tmp_path / "o")],
        "audit": ["--scores", str(tmp_path / "s")],
        "filter": ["--scores", "s", "--input", "x", "--output", str(tmp_path / "o")],
        "distill": ["--output", str(tmp_path / "o")],
        "train-teacher": ["--output", str(tmp_path / "o")],
    }[argv[0]]
    if argv[0] == "filter" and "--min-score" not in argv and "--top-fraction" not in argv:
        required += ["--min-score", "0"]
    code, _, err = run(capsys, *argv[:1], *required, *argv[1:])
    assert code == 2
    line = last_line(err)
    assert line.startswith(f"dpiqa {argv[0]}: error: ") and says in line, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_output_that_is_a_file(capsys, shards, tmp_path):
    target = tmp_path / "scores.parquet"
    target.write_bytes(b"x")
    code, _, err = run(capsys, "score", "--input", str(shards), "--output", str(target), *TINY)
    assert code == 4 and "is an existing file" in last_line(err)


def test_output_inside_the_input(capsys, shards):
    code, _, err = run(capsys, "score", "--input", str(shards), "--output", str(shards / "scores"), *TINY)
    assert code == 2 and "lies inside the input folder" in last_line(err)
    assert not (shards / "scores").exists()


def test_files_that_are_no_shards_named_explicitly(capsys, tmp_path):
    (tmp_path / "scores.parquet").write_bytes(b"PAR1" + bytes(100) + b"PAR1")
    code, _, err = run(
        capsys, "score", "--input", str(tmp_path / "scores.parquet"), "--output", str(tmp_path / "o"), *TINY
    )
    assert code == 4 and "neither a tar shard" in last_line(err)
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'scores.parquet'}\n")
    code, _, err = run(capsys, "score", "--input", str(tmp_path / "list.txt"), "--output", str(tmp_path / "o"), *TINY)
    assert code == 4 and "a shard list with 1 line(s) that name no tar shard (first, line 1: " in last_line(err)
    # a text that is no list at all: named with its first line, not read as URLs (fsspec: "Protocol not known")
    readme = tmp_path / "README.md"
    readme.write_text("# Scores\n\nSee `s3://bucket/scores/` and http://example.com for what `dpiqa` wrote.\n")
    code, _, err = run(capsys, "score", "--input", str(readme), "--output", str(tmp_path / "o"), *TINY)
    assert code == 4 and last_line(err).endswith(
        f"{readme}: a shard list with 1 line(s) that name no tar shard (first, line 3: 'See `s3://bucket/scores/` "
        "and http://example.com for what `dpiqa` wrote.'); each line holds one .tar, .tar.gz, .tgz, .tar.bz2, "
        ".tar.xz or .tar.zst URL or path"
    )


def test_brace_pattern_naming_missing_shards(capsys, shards, tmp_path):
    pattern = f"{shards}/{{00000..00009}}.tar"
    code, _, err = run(capsys, "score", "--input", pattern, "--output", str(tmp_path / "o"), *TINY)
    assert code == 4
    assert "8 of 10 shards do not exist" in last_line(err) and "00002.tar" in last_line(err)
    code, out, _ = run(capsys, "score", "--input", pattern, "--output", str(tmp_path / "o"), "--skip-missing", *TINY)
    assert code == 0 and "scored 6 rows from 2 shards: 6 ok, 0 errors" in out


def test_truncated_checkpoint_is_refused_before_the_output_is_claimed(capsys, shards, tmp_path):
    from dpiqa.models import build

    ckpt = tmp_path / "ckpt"
    build("dpiqa-student-tiny").save_pretrained(str(ckpt))
    weights = ckpt / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])
    (ckpt / "card.json").unlink()
    out = tmp_path / "o"
    code, _, err = run(
        capsys, "score", "--input", str(shards), "--output", str(out), "--model", str(ckpt), "--executor", "local"
    )
    assert code == 4 and "model.safetensors" in last_line(err) and "cut short" in last_line(err)
    assert not out.exists()  # nothing claimed: the rerun with the repaired checkpoint is not refused
    weights.write_bytes(whole)
    code, _, _ = run(
        capsys, "score", "--input", str(shards), "--output", str(out), "--model", str(ckpt), "--executor", "local"
    )
    assert code == 0


def test_foreign_output_names_the_model_that_wrote_it(capsys, shards, tmp_path):
    out = str(tmp_path / "o")
    assert run(capsys, "score", "--input", str(shards), "--output", out, *TINY)[0] == 0
    code, _, err = run(
        capsys,
        "score",
        "--input",
        str(shards),
        "--output",
        out,
        "--model",
        "dpiqa-student-small",
        "--executor",
        "local",
    )
    assert code == 4 and "holds results of model 'dpiqa-student-tiny'" in last_line(err)


def test_damaged_run_files_do_not_block_reruns(capsys, caplog, shards, tmp_path):
    """An empty or half-written marker (a kill or a full disk at the wrong moment) is not done: the rerun
    redoes that shard; `_run.json` cut short is rewritten when the markers show the same configuration. (A run
    records its markers in bulk after writing them; a marker damaged by a kill has no such record, which this
    test brings about by removing the records.)"""
    out = tmp_path / "o"
    assert run(capsys, "score", "--input", str(shards), "--output", str(out), *TINY)[0] == 0
    for record in (out / "runs").glob("*.shards-*.parquet"):
        record.unlink()
    whole = (out / "_done" / "00001.json").read_text()
    (out / "_done" / "00001.json").write_text(whole[: len(whole) // 2])
    (out / "_run.json").write_text("")
    (out / "manifest.json").write_text('{"rows": ')
    code, stdout, err = run(capsys, "score", "--input", str(shards), "--output", str(out), *TINY)
    assert code == 0 and "from 1 shards: 3 ok, 0 errors; shards: 1 already done" in stdout
    assert "_done/00001.json: unreadable completion marker" in caplog.text
    assert json.loads((out / "_done" / "00001.json").read_text())["rows"] == 3
    assert json.loads((out / "_run.json").read_text())["config_hash"]
    (out / "_done" / "00000.json").write_text("")
    code, stdout, err = run(capsys, "audit", "--scores", str(out), "--json", str(tmp_path / "a.json"))
    assert code == 0 and "audited 3 rows of 1 shards" in stdout  # the damaged marker's shard is not counted
    code, stdout, err = run(
        capsys,
        "filter",
        "--scores",
        str(out),
        "--input",
        str(shards),
        "--output",
        str(tmp_path / "f"),
        "--min-score=-1e9",
        "--executor",
        "local",
    )
    assert code == 1 and "no completed scores" in stdout  # listed as failed, not crashed
