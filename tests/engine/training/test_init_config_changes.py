"""`--init` with `--set`: a checkpoint fine-tuned with config fields that add parts (the student's `head_pool`)."""

from __future__ import annotations

import pytest
import torch

from dpiqa import models
from dpiqa.engine.training.model import ModelSpec, build_model
from dpiqa.errors import UsageError


@pytest.fixture
def start(tmp_path):
    torch.manual_seed(0)
    student = models.build("dpiqa-student-tiny").eval()
    student.save_pretrained(str(tmp_path / "start"))
    return tmp_path / "start", student


def test_init_with_head_pool_keeps_every_weight_and_the_scores(start):
    """The checkpoint's weights all land in the changed model, the pooled read-out is added at zero: the model
    scores as the checkpoint does until it trains."""
    path, student = start
    changed = build_model(ModelSpec(kind="student", init=str(path), overrides={"head_pool": "meanstd"}), 100.0)
    assert changed.config.head_pool == "meanstd" and student.config.head_pool == ""
    state = changed.state_dict()
    for name, tensor in student.state_dict().items():
        assert torch.equal(state[name], tensor), name
    assert {k for k in state if k not in student.state_dict()} == {
        "pool_head.weight",
        "pool_head.bias",
        "pool_norm.running_mean",
        "pool_norm.running_var",
        "pool_norm.num_batches_tracked",
    }
    images = torch.rand(2, 3, student.config.image_size, student.config.image_size)
    with torch.no_grad():
        torch.testing.assert_close(changed.eval()(images)[0], student(images)[0])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"head_hidden": 4}, "do not fit"),  # reshapes the MLP: fine-tuning would not start from the checkpoint
        ({"head_size": 4}, "no field head_size"),
        ({"head_pool": "max"}, "head_pool"),
    ],
)
def test_init_with_a_change_that_does_not_keep_the_checkpoint_stops(start, overrides, message):
    path, _ = start
    with pytest.raises((UsageError, ValueError), match=message):
        build_model(ModelSpec(kind="student", init=str(path), overrides=overrides), 100.0)


def test_init_with_a_change_that_drops_a_part_stops(tmp_path):
    """A pooled checkpoint fine-tuned with `head_pool=""` would lose its read-out: one line, not a silent drop."""
    path = str(tmp_path / "pooled")
    models.build("dpiqa-student-tiny", overrides={"head_pool": "meanstd"}).save_pretrained(path)
    with pytest.raises(UsageError, match="drops the checkpoint's pool_"):
        build_model(ModelSpec(kind="student", init=path, overrides={"head_pool": ""}), 100.0)
