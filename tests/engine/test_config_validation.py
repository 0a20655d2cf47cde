"""Every config refuses in its constructor what the command line refuses: an API caller gets the same
`UsageError` (exit status 2 on the command line) before anything is read, started or written."""

from __future__ import annotations

import dataclasses

import pytest
from clirun import dpiqa

from dpiqa.engine.audit.config import AuditConfig
from dpiqa.engine.compact import CompactConfig
from dpiqa.engine.pipeline import ScoreConfig
from dpiqa.engine.splits import SplitConfig
from dpiqa.engine.training.config import TrainConfig, TrainRun
from dpiqa.engine.training.model import ModelSpec
from dpiqa.errors import UsageError

TEACHER = ModelSpec(kind="teacher", config="dpiqa-teacher-tiny", random_prior=True)
STUDENT = ModelSpec(kind="student", config="dpiqa-student-tiny", pretrained_backbone=False)


def teacher_config(**changes) -> TrainConfig:
    """A valid teacher recipe on a labelled table, with `changes`."""
    fields = {"job": "train-teacher", "output": "out", "model": TEACHER, "dataset": "csv", "root": "t.csv"}
    return TrainConfig(**{**fields, **changes})


def test_the_valid_recipes_here_are_accepted():
    """The bases the refusals below change one thing of (so a refusal is that one thing's)."""
    assert teacher_config().protocol()["batch_size"] == 16
    assert ScoreConfig(input="in", output="out").decode_on == "auto"
    assert TrainRun(workers=2, executor="ray").workers == 2


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda: ScoreConfig(input="i", output="o", decode_on="gpu"), "--decode-on must be one of auto, cpu, device"),
        (lambda: ScoreConfig(input="i", output="o", batch_size=0), "--batch-size must be at least 1, not 0"),
        (lambda: ScoreConfig(input="i", output="o", actors=0), "--workers must be at least 1, not 0"),
        (lambda: ScoreConfig(input="i", output="o", max_pixels=-1), "--max-pixels must be at least 1"),
        (lambda: ScoreConfig(input="i", output="o", units_per_worker=0), "--units-per-worker must be at least 1"),
        (lambda: ScoreConfig(input="i", output="o", chunk_size=0), "chunk_size must be at least 1"),
        (lambda: ScoreConfig(input="i", output="o", decode_threads=0), "decode_threads must be at least 1"),
        (lambda: ScoreConfig(input="i", output="o", retries=-1), "--retries must be >= 0"),
        (lambda: ScoreConfig(input="i", output="o", hang_seconds=0), "--hang-seconds must be > 0"),
        (lambda: TrainRun(workers=0), "--workers must be at least 1, not 0"),
        (lambda: TrainRun(cpus_per_worker=0), "--cpus-per-worker must be > 0"),
        (lambda: TrainRun(threads=0), "--threads must be at least 1"),
        (lambda: TrainRun(max_failures=-1), "--max-failures must be >= 0"),
        (lambda: TrainRun(executor="threads"), "--executor must be one of auto, local, ray, not 'threads'"),
        (
            lambda: TrainRun(executor="local", workers=2),
            "--executor local runs one worker in this process; --workers 2 needs --executor ray",
        ),
        (
            lambda: teacher_config(protocol_name="paper", split=SplitConfig(fractions=(0.7, 0.1, 0.2), n_splits=1)),
            "--protocol paper has no validation part",
        ),
        (lambda: teacher_config(protocol_name="theirs"), "--protocol must be one of ours, paper"),
        (
            lambda: teacher_config(batch_size=10, run=TrainRun(workers=4, executor="ray")),
            "--batch-size 10 is the global batch and must divide evenly among --workers 4",
        ),
        (lambda: teacher_config(epochs=0), "--epochs must be at least 1, not 0"),
        (lambda: teacher_config(batch_size=0), "--batch-size must be at least 1, not 0"),
        (lambda: teacher_config(lr=0.0), "--lr must be > 0"),
        (lambda: teacher_config(synthetic=-1), "--synthetic must be >= 0"),
        (lambda: teacher_config(rank_margin=0.0), "--rank-margin > 0"),
        (lambda: teacher_config(precision="fp8"), "--precision must be one of auto, fp32, bf16, fp16"),
        (lambda: teacher_config(distill_mode="maps"), "--mode must be one of feature, score, both, none"),
        (lambda: teacher_config(weights_dtype="int8"), "weights_dtype 'int8' is not one of float16, bfloat16, float32"),
        (lambda: teacher_config(dataset=None, root=None), "nothing to train on: give --dataset and --root"),
        (
            lambda: teacher_config(shards="s/{0..3}.tar", rank_weight=0.5),
            "--rank-weight, --extra-train and --extra-val work with a labelled --dataset, not --input",
        ),
        (
            lambda: teacher_config(job="distill", model=STUDENT),
            "distill needs --teacher (with --dataset) or --teacher-outputs (with --input)",
        ),
        (
            lambda: teacher_config(job="ablate-student", model=STUDENT),
            "student ablations distill from a teacher: pass --teacher",
        ),
        (lambda: ModelSpec(kind="teacher", config="dpiqa-teacher-tiny"), "train-teacher needs the diffusion prior"),
        (lambda: ModelSpec(kind="critic"), "the model kind must be teacher or student, not 'critic'"),
        (lambda: SplitConfig(fractions=(0.5, 0.1, 0.2)), "fractions must sum to 1"),
        (lambda: SplitConfig(fractions=(0.0, 0.5, 0.5)), "the train fraction must be positive"),
        (lambda: SplitConfig(n_splits=0), "n_splits must be at least 1"),
        (lambda: AuditConfig(scores="s", run="r", under="u"), "select the shards by --run or by --under, not both"),
        (lambda: AuditConfig(scores="s", bins=100), "bins must be a positive multiple of"),
        (lambda: AuditConfig(scores="s", baseline="b", baseline_json="j"), "give one baseline"),
        (lambda: AuditConfig(scores="s", thumbnails=-1), "thumbnails must be >= 0"),
        (lambda: CompactConfig(scores="s", target_mb=0), "--target-mb must be > 0"),
        (lambda: CompactConfig(scores="s", row_group_rows=0), "--row-group-rows must be >= 1"),
    ],
)
def test_the_api_refuses_what_the_command_line_refuses(make, says):
    with pytest.raises(UsageError) as caught:
        make()
    assert says in str(caught.value)


def test_a_changed_copy_is_checked_again():
    """`dataclasses.replace` (how ablations derive their variants) builds through the same check."""
    with pytest.raises(UsageError, match="must divide evenly"):
        dataclasses.replace(teacher_config(), batch_size=10, run=TrainRun(workers=4, executor="ray"))


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (
            ["distill", "--dataset", "csv", "--root", "t.csv", "--config", "dpiqa-student-tiny"],
            "distill needs --teacher (with --dataset) or --teacher-outputs (with --input)",
        ),
        (
            ["ablate", "--kind", "student", "--dataset", "csv", "--root", "t.csv", "--random-prior"],
            "student ablations distill from a teacher: pass --teacher",
        ),
        (
            ["train-teacher", "--config", "dpiqa-teacher-tiny", "--random-prior"],
            "nothing to train on: give --dataset and --root, and/or --input",
        ),
        (
            ["distill", "--input", "s/{0..1}.tar", "--mode", "none", "--rank-weight", "1", "--no-pretrained"],
            "--rank-weight, --extra-train and --extra-val work with a labelled --dataset, not --input",
        ),
    ],
)
def test_the_command_line_says_the_configs_refusal_in_one_line_with_status_2(tmp_path, argv, says):
    """The checks that lived in the jobs (`jobs/distill.py`, `jobs/ablate.py`) or after the dataset was read
    (`training/checks.py`, exit status 4 there) now come from the config: the same line, status 2."""
    result = dpiqa(*argv, "--output", str(tmp_path / "o"))
    assert result.returncode == 2, result.stderr
    assert says in result.stderr.strip().splitlines()[-1], result.stderr
    assert not (tmp_path / "o").exists()
