"""Options renamed to one name across commands (issue 36) keep their old spelling as a deprecated alias: it sets
what the new spelling sets and warns once, on stderr, naming the spelling to use."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from clirun import last_line, run
from corpus import graded_table
from tiny_training import tiny_teacher

from dpiqa.jobs.cli import build_parser

# (the command line with the old spelling, the same with the new one, the warning line); OUT: an output folder
RENAMED = [
    (
        ["distill", "--output", "OUT", "--shards", "/data/{0..9}.tar"],
        ["distill", "--output", "OUT", "--input", "/data/{0..9}.tar"],
        "dpiqa distill: warning: --shards is deprecated; use --input",
    ),
    (
        ["score", "--input", "in", "--output", "OUT", "--actors", "3"],
        ["score", "--input", "in", "--output", "OUT", "--workers", "3"],
        "dpiqa score: warning: --actors is deprecated; use --workers",
    ),
    (
        ["train-teacher", "--output", "OUT", "--gpu"],
        ["train-teacher", "--output", "OUT", "--device", "cuda"],
        "dpiqa train-teacher: warning: --gpu is deprecated; use --device cuda",
    ),
    (
        ["distill", "--output", "OUT", "--no-gpu"],
        ["distill", "--output", "OUT", "--device", "cpu"],
        "dpiqa distill: warning: --no-gpu is deprecated; use --device cpu",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "warning"), RENAMED, ids=[r[0][-2] if r[0][-1][0] != "-" else r[0][-1] for r in RENAMED]
)
def test_an_old_spelling_parses_as_the_new_one_and_warns_once(
    old: list[str], new: list[str], warning: str, capsys: pytest.CaptureFixture
) -> None:
    expected = vars(build_parser().parse_args(new))
    assert capsys.readouterr().err == ""  # the new spelling says nothing
    twice = old + old[-2:] if old[-1][0] != "-" else old + old[-1:]
    assert vars(build_parser().parse_args(twice)) == expected
    assert capsys.readouterr().err.splitlines() == [warning]  # given twice, said once


def test_old_spellings_are_left_out_of_help(capsys: pytest.CaptureFixture) -> None:
    for command in ("distill", "score", "train-teacher"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = capsys.readouterr().out
        assert "--input" in text or "--device" in text
        for old in ("--shards", "--actors", "--gpu", "--no-gpu"):
            assert old not in text, (command, old)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a machine without a GPU: --device cuda is refused")
def test_gpu_runs_as_device_cuda(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The whole command with the old `--gpu` and with `--device cuda`: the same refusal (this machine has no
    GPU), the same exit status, before any Ray start-up; the old one with the warning first."""
    table = graded_table(tmp_path, n=12)
    argv = [*tiny_teacher(table), "--executor", "local", "--output", str(tmp_path / "o")]
    code_new, _, err_new = run(capsys, *argv, "--device", "cuda")
    code_old, _, err_old = run(capsys, *argv, "--gpu")
    assert code_new == code_old == 2
    assert "--device cuda: 1 GPU(s) needed (one per worker) and this machine has 0" in last_line(err_new)
    assert last_line(err_old) == last_line(err_new)
    assert err_old.splitlines()[0] == "dpiqa train-teacher: warning: --gpu is deprecated; use --device cuda"
    assert "deprecated" not in err_new
