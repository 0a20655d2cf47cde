"""Arguments a hostile or hurried user types (issue 39): empty locations, numbers that are no numbers, config
overrides of the wrong type, undefined correlations. Each ends as one line with its documented exit status
(2 for options that can never work), never a traceback, and nothing written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import corpus
import pytest
from clirun import one_line, run

from dpiqa.jobs.cli import main


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        # an unset shell variable: "" would be the current folder to every filesystem
        (["score", "--input", "", "--output", "{o}"], "argument --input: must name a file, folder or URL"),
        (["score", "--input", "{i}", "--output", ""], "argument --output: must name a file, folder or URL"),
        (["score", "--input", "{i}", "--output", " "], "argument --output: must name a file, folder or URL"),
        (["filter", "--scores", "", "--input", "{i}", "--output", "{o}", "--min-score", "0"], "argument --scores"),
        (["audit", "--scores", "{o}", "--report", ""], "argument --report: must name a file, folder or URL"),
        (["train-teacher", "--output", ""], "argument --output: must name a file, folder or URL"),
        (["export", "--model", "demo", "--output", ""], "argument --output: must name a file, folder or URL"),
        # numeric training options as `score`'s are checked
        (["train-teacher", "--output", "{o}", "--rank-weight", "nan"], "argument --rank-weight: must be a number >= 0"),
        (["distill", "--output", "{o}", "--rank-weight", "inf"], "argument --rank-weight: must be a number >= 0"),
        (["distill", "--output", "{o}", "--rank-weight=-1"], "argument --rank-weight: must be a number >= 0"),
        (["train-teacher", "--output", "{o}", "--milestones", "5,x"], "argument --milestones: must be epochs >= 1"),
        (["train-teacher", "--output", "{o}", "--milestones", "0"], "argument --milestones: must be epochs >= 1"),
        (["train-teacher", "--output", "{o}", "--fractions", "a,b,c"], "argument --fractions: must be three numbers"),
        (["distill", "--output", "{o}", "--fractions", "0.7,nan,0.3"], "argument --fractions: must be three numbers"),
        (["distill", "--output", "{o}", "--fractions", "0.5,0.1,0.1"], "argument --fractions: must sum to 1"),
        (
            ["eval", "--model", "brisque", "--dataset", "csv", "--root", "{i}", "--fractions", "a,b,c"],
            "argument --fractions: must be three numbers from 0 to 1 like 0.7,0.1,0.2, not 'a,b,c'",
        ),
        (["eval", "--model", "brisque", "--dataset", "csv", "--root", ""], "argument --root: must name a file"),
    ],
)
def test_bad_locations_and_numbers_are_one_line_usage_errors(capsys, tmp_path, monkeypatch, argv, says):
    (tmp_path / "in").mkdir()
    monkeypatch.chdir(tmp_path)  # where an empty location would land
    argv = [a.format(i=tmp_path / "in", o=tmp_path / "o") for a in argv]
    code, _, err = run(capsys, *argv)
    line = one_line(err)
    assert code == 2, err
    assert line.startswith(f"dpiqa {argv[0]}: error: ") and says in line, line
    assert not (tmp_path / "o").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # nothing written where the command ran either


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("image_size=abc", 'dpiqa-student-tiny: --set image_size="abc": must be an integer >= 1'),
        ("image_size=-5", "dpiqa-student-tiny: --set image_size=-5: must be an integer >= 1"),
        ("image_size=0", "dpiqa-student-tiny: --set image_size=0: must be an integer >= 1"),
        ("image_size=2.5", "must be an integer >= 1"),
        ("mos_scale=0", "dpiqa-student-tiny: --set mos_scale=0: must be a number > 0"),
        ("freeze_backbone=3", "--set freeze_backbone=3: must be true or false"),
        ("backbone=nope", 'dpiqa-student-tiny with --set backbone="nope" cannot be built: Unknown model (nope)'),
    ],
)
def test_model_info_overrides_of_the_wrong_kind_are_one_line_usage_errors(capsys, override, says):
    code, out, err = run(capsys, "model-info", "dpiqa-student-tiny", "--set", override)
    assert code == 2 and not out
    assert says in one_line(err), err


def test_model_info_override_that_fits_still_works(capsys):
    code, out, _ = run(capsys, "model-info", "dpiqa-student-tiny", "--set", "image_size=96", "--json")
    assert code == 0 and json.loads(out)["input_size"] == [96, 96]


def test_eval_json_with_an_undefined_correlation_is_json(capsys, tmp_path):
    """Equal MOS for every image: every correlation is undefined. `--json` writes null (NaN is not JSON) and the
    text form says n/a."""
    table = corpus.graded_table(tmp_path, n=6)
    with open(table, newline="") as f:
        rows = list(csv.reader(f))
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows([rows[0], *[[path, "50"] for path, _ in rows[1:]]])
    argv = ["eval", "--model", "brisque", "--dataset", "csv", "--root", str(table), "--split", "all"]
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    doc = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in eval --json: not JSON"))
    metrics = doc["metrics"]
    assert metrics["n"] == 6
    assert metrics["srcc"] is None and metrics["plcc"] is None and metrics["krcc"] is None
    code, out, err = run(capsys, *argv)
    assert code == 0 and "SRCC n/a" in out and "PLCC n/a" in out, out


def _damaged_demo(tmp_path: Path, config_text: str) -> Path:
    from dpiqa.models import build

    ckpt = tmp_path / "ckpt"
    build("dpiqa-student-tiny").save_pretrained(str(ckpt))
    (ckpt / "config.json").write_text(config_text)
    return ckpt


@pytest.mark.parametrize("text", ["[1, 2]", '"x"', "null"])
def test_a_checkpoint_config_that_is_no_json_object_is_one_line(capsys, tmp_path, text):
    ckpt = _damaged_demo(tmp_path, text)
    shards = tmp_path / "in"
    shards.mkdir()
    corpus.write_corpus(shards, shards=1, per_shard=2)
    out = tmp_path / "o"
    code, _, err = run(capsys, "score", "--input", str(shards), "--output", str(out), "--model", str(ckpt))
    assert code == 4 and f"{ckpt / 'config.json'}: JSON " in one_line(err) and "not an object" in err, err
    assert not out.exists()
    code, _, err = run(capsys, "model-info", str(ckpt))
    assert code == 4 and "config.json: JSON" in one_line(err)


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("scored")
    (d / "in").mkdir()
    corpus.write_corpus(d / "in", shards=1, per_shard=3)
    assert main(["score", "--input", str(d / "in"), "--output", str(d / "out"), "--model", "brisque"]) == 0
    return d


@pytest.mark.parametrize("text", ["[1, 2]", '"x"'])
def test_a_baseline_json_that_is_no_object_is_one_line(capsys, scored, tmp_path, text):
    capsys.readouterr()
    (tmp_path / "base.json").write_text(text)
    code, _, err = run(capsys, "audit", "--scores", str(scored / "out"), "--baseline-json", str(tmp_path / "base.json"))
    assert code == 4 and "not an audit document" in one_line(err) and str(tmp_path / "base.json") in err


def test_an_output_run_file_that_is_no_object_counts_as_cut_short(capsys, scored, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(scored / "out", out)
    (out / "_run.json").write_text("[1, 2]")
    code, _, err = run(capsys, "score", "--input", str(scored / "in"), "--output", str(out), "--model", "brisque")
    assert code == 0, err
    assert json.loads((out / "_run.json").read_text())["config_hash"]


def test_device_cuda_on_a_machine_without_that_gpu_is_refused_before_anything_is_written(capsys, tmp_path, monkeypatch):
    import torch

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    missing = torch.cuda.device_count() if torch.cuda.is_available() else 0  # the first index torch cannot see
    device = f"cuda:{missing}" if missing else "cuda"
    shards = tmp_path / "in"
    shards.mkdir()
    corpus.write_corpus(shards, shards=1, per_shard=2)
    out = tmp_path / "o"
    code, _, err = run(
        capsys,
        "score",
        "--input",
        str(shards),
        "--output",
        str(out),
        "--model",
        "dpiqa-student-tiny",
        "--device",
        device,
    )
    line = one_line(err)
    assert code == 2 and f"--device {device}: torch sees " in line and "use --device auto or cpu" in line, err
    assert not out.exists()  # no _run.json: a rerun with --device cpu is not refused as another configuration


def test_grouped_on_a_dataset_without_groups_is_refused_not_trained_ungrouped(capsys, tmp_path):
    """`--grouped` on a table without a group column used to split by image while the card recorded
    `grouped: true`; the split itself now refuses it, for `eval` and the training jobs alike (issue 36)."""
    table = corpus.graded_table(tmp_path, n=30)
    code, out, err = run(
        capsys, "eval", "--model", "brisque", "--dataset", "csv", "--root", str(table), "--grouped", "--seed", "0"
    )
    assert code == 2 and not out, err
    assert "--grouped splits need a group per image" in one_line(err)
    code, out, err = run(
        capsys,
        "distill",
        "--mode",
        "none",
        "--dataset",
        "csv",
        "--root",
        str(table),
        "--grouped",
        "--config",
        "dpiqa-student-tiny",
        "--no-pretrained",
        "--epochs",
        "1",
        "--output",
        str(tmp_path / "student"),
    )
    assert code == 2, err
    assert "--grouped splits need a group per image" in one_line(err)
    assert not (tmp_path / "student" / "model.safetensors").exists()
