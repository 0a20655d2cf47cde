"""One identity rule for a run (`dpiqa.engine.identity`): a config field is part of what makes two runs the same
run unless it is a `setting`; a rerun that changes only settings resumes, one that changes an identity field is
refused (scoring) or trains anew (training)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import corpus
import pytest

from dpiqa.engine.identity import is_setting
from dpiqa.engine.output import ForeignOutputError
from dpiqa.engine.pipeline import ScoreConfig, run_score
from dpiqa.engine.splits import SplitConfig
from dpiqa.engine.training.config import TrainConfig, TrainRun
from dpiqa.engine.training.model import ModelSpec

# What the two configs' identities were before the rule was one (engine/pipeline.py's allow-list,
# training/run.py's deny-list): written out here, so that a field that moves in or out is a decision this test
# makes visible (a new field is identity by default: a rerun with it changed refuses, never resumes wrongly).
SCORE_SETTINGS = {
    "input",
    "output",
    "model",  # enters as what it resolves to: architecture, checkpoint hash, preprocessing, MOS scale
    "batch_size",
    "run",  # its precision enters
    "overwrite",
    "actors",
    "chunk_size",
    "retries",
    "decode_on",  # enters as the decoder it resolves to (jpeg_decoder)
    "skip_missing",
    "units_per_worker",
    "decode_threads",
    "hang_seconds",
    "storage_options",
}
TRAIN_SETTINGS = {"output", "storage", "storage_options", "command", "run", "cache_features", "weights_dtype"}


def settings(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if is_setting(f)}


def test_the_settings_are_the_ones_decided():
    assert settings(ScoreConfig) == SCORE_SETTINGS
    assert settings(TrainConfig) == TRAIN_SETTINGS


def teacher(**changes) -> TrainConfig:
    fields = {
        "job": "train-teacher",
        "output": "out",
        "model": ModelSpec(kind="teacher", config="dpiqa-teacher-tiny", random_prior=True),
        "dataset": "csv",
        "root": "t.csv",
        "split": SplitConfig(n_splits=2, seed=3),
        "epochs": 4,
    }
    return TrainConfig(**{**fields, **changes})


def test_a_training_identity_hash_is_the_one_runs_were_resumed_by():
    """The hash names the Ray Train run a rerun resumes: the rule must not change it for an existing recipe
    (the value was printed by the deny-list's `identity()` before the rule replaced it)."""
    config = teacher(
        model=ModelSpec(
            kind="teacher", config="dpiqa-teacher-tiny", random_prior=True, overrides={"text_adapter": False}
        ),
        dataset_options={"mos_scale": 5},
        milestones=(2,),
        storage_options={"anon": True},
        command=["dpiqa", "x"],
        weights_dtype="float16",
        run=TrainRun(workers=2, executor="ray"),
    )
    assert config.identity() == "d7aa6fc6a1ce359c"


@pytest.mark.parametrize(
    "change",
    [
        {"run": TrainRun(workers=2, threads=3, cpus_per_worker=2.0, max_failures=0, executor="ray")},
        {"run": TrainRun(cache_dir="/tmp/cache", executor="local")},
        {"output": "elsewhere", "storage": "s3://b/train", "storage_options": {"anon": True}},
        {"command": ["dpiqa", "train-teacher", "--workers", "2"], "weights_dtype": "bfloat16"},
        {"cache_features": False},
    ],
)
def test_a_training_rerun_that_changes_settings_resumes(change):
    assert teacher(**change).identity() == teacher().identity()


@pytest.mark.parametrize(
    "change",
    [
        {"lr": 3e-5},
        {"epochs": 5},
        {"batch_size": 8},
        {"split": SplitConfig(n_splits=2, seed=4)},
        {"root": "other.csv"},
        {"model": ModelSpec(kind="teacher", config="dpiqa-teacher-tiny", random_prior=True, image_size=64)},
        {"precision": "bf16"},
        {"synthetic": 1},
    ],
)
def test_a_training_rerun_that_changes_the_recipe_is_another_run(change):
    assert teacher(**change).identity() != teacher().identity()


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    shards = tmp_path_factory.mktemp("in")
    corpus.write_corpus(shards, shards=2, per_shard=3)
    out = tmp_path_factory.mktemp("out") / "scores"
    first = run_score(ScoreConfig(input=str(shards), output=str(out), model="dpiqa-student-tiny"), "local")
    assert first.manifest["shards"]["written"] == 2
    return shards, out


def test_a_scoring_rerun_that_changes_settings_resumes(scored):
    shards, out = scored
    config = ScoreConfig(
        input=f"{shards}/00000.tar",
        output=str(out),
        model="dpiqa-student-tiny",
        batch_size=2,
        chunk_size=1,
        retries=0,
        units_per_worker=1,
        decode_threads=1,
        hang_seconds=99.0,
        decode_on="cpu",  # what `auto` resolves to on a CPU: the same decoder
    )
    again = run_score(config, "local")
    assert again.manifest["shards"]["skipped_done"] == 1 and again.manifest["shards"].get("written", 0) == 0


@pytest.mark.parametrize("change", [{"max_pixels": 1000}, {"write_maps": True}])
def test_a_scoring_rerun_that_changes_its_identity_is_refused(scored, change):
    shards, out = scored
    with pytest.raises(ForeignOutputError):
        run_score(ScoreConfig(input=str(shards), output=str(out), model="dpiqa-student-tiny", **change), "local")


def test_a_filter_runs_identity_is_what_it_keeps_not_where_or_how_fast():
    """The filter follows the one rule: what it keeps (the scored run, the cut, keys only) is its identity; the
    shards it copies, the output, the workers, --overwrite and the storage options are settings."""
    from dpiqa.engine.filter.run import FilterConfig
    from dpiqa.engine.identity import identity_fields

    a = FilterConfig(scores="s3://b/scores", input="s3://b/in/", output="s3://b/kept", min_score=3.5)
    assert identity_fields(a) == {"scores": "s3://b/scores", "min_score": 3.5, "top_fraction": None, "keys_only": False}
    moved = FilterConfig(
        scores="s3://b/scores",
        input="/local/in",
        output="/local/kept",
        min_score=3.5,
        overwrite=True,
        workers=16,
        storage_options={"anon": True},
    )
    assert identity_fields(moved) == identity_fields(a)
    assert identity_fields(FilterConfig(scores="s3://b/scores", input="i", output="o", top_fraction=0.1)) != (
        identity_fields(a)
    )
