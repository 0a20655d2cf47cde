"""Stages get their resources through a configured copy (`Stage.with_`), never by a change to a stage in use."""

from __future__ import annotations

import pytest

from dpiqa import models
from dpiqa.engine.pipeline import ScoreConfig, build_stages
from dpiqa.engine.stages.decode import DecodeStage
from dpiqa.engine.stages.source import SourceStage


def test_with_returns_a_configured_copy_and_leaves_the_stage_as_it_was():
    stage = SourceStage(chunk_size=7, storage_options={"anon": True})
    copy = stage.with_(batch_size=1, num_cpus=2.0, concurrency=(1, 4))
    assert (copy.batch_size, copy.num_cpus, copy.concurrency) == (1, 2.0, (1, 4))
    assert (stage.batch_size, stage.num_cpus, stage.concurrency) == (None, 0.5, None)  # the class defaults
    assert copy is not stage and type(copy) is SourceStage
    assert (copy.chunk_size, copy.storage_options) == (7, {"anon": True})  # what it computes is kept


def test_with_refuses_what_is_not_a_resource():
    with pytest.raises(TypeError, match="DecodeStage.with_: max_pixels not among num_cpus, num_gpus"):
        DecodeStage(models.describe("dpiqa-student-tiny").preprocessing).with_(max_pixels=10)


def test_a_score_runs_stages_carry_the_configs_batch():
    config = ScoreConfig(input="in", output="out", model="dpiqa-student-tiny", batch_size=5)
    info = models.describe(config.model)
    source, decode, score = build_stages(config, info, gpus=0)
    assert (source.batch_size, decode.batch_size, score.batch_size) == (1, 5, 5)
    assert SourceStage.batch_size is None and DecodeStage.batch_size is None  # no class default was changed
