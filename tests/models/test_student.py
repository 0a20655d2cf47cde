"""The student: spec sizes on the meta device, round trip, a training step, offline ImageNet weights."""

from __future__ import annotations

import logging
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

import models
from models.student import DPIQAStudent, StudentConfig


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_full_size_parameter_counts_and_shapes_on_meta() -> None:
    student = DPIQAStudent.from_config(StudentConfig(), device="meta").eval()
    assert numel(student.backbone) == 63_786_960  # EfficientNet-B7 features (spec)
    map_head = 2560 * 8 * 3 * 3 + 8  # ConvTranspose2d(2560 -> 8, k3)             = 184,328
    mlp = (32768 * 512 + 512) + (512 * 512 + 512) + (512 + 1)  # 32768 -> 512 -> 512 -> 1 = 17,040,897
    assert numel(student.map_head) == map_head and numel(student.mlp) == mlp
    assert numel(student) == 63_786_960 + map_head + mlp
    assert round(numel(student) / 1e6) == 81  # spec: "about 81 M parameters"

    x = torch.empty(2, 3, 512, 512, device="meta")
    with torch.no_grad():
        features = student.backbone.forward_features(x)
        score, quality_map = student(x)
    assert tuple(features.shape) == (2, 2560, 16, 16)
    assert tuple(quality_map.shape) == (2, 8, 64, 64) and tuple(score.shape) == (2,)


@pytest.fixture
def tiny() -> DPIQAStudent:
    return models.build("dpiqa-student-tiny").eval()


def images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_save_load_round_trip_is_bit_identical(tiny: DPIQAStudent, tmp_path: Path) -> None:
    x = images()
    with torch.inference_mode():
        before_score, before_map = tiny(x)
    card = tiny.save_pretrained(str(tmp_path / "ckpt"))
    loaded = models.load_model(str(tmp_path / "ckpt"))
    assert isinstance(loaded, DPIQAStudent)
    with torch.inference_mode():
        after_score, after_map = loaded(x)
    assert torch.equal(before_score, after_score) and torch.equal(before_map, after_map)
    assert card["parameters"]["backbone"] == numel(tiny.backbone)
    assert card["parameters"]["head"] == numel(tiny.map_head) + numel(tiny.mlp)


def test_training_step_reaches_every_part(tiny: DPIQAStudent) -> None:
    tiny.train()
    score, quality_map = tiny(images(2))
    loss = torch.nn.functional.mse_loss(score, torch.tensor([0.3, 0.7])) + quality_map.mean()
    loss.backward()
    no_grad = [n for n, p in tiny.named_parameters() if p.grad is None or not p.grad.any()]
    assert no_grad == []


def test_pretrained_backbone_offline_logs_and_continues(monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    config = StudentConfig(backbone="test_efficientnet", map_size=16, head_hidden=64, image_size=64)
    with caplog.at_level(logging.WARNING, logger="models.student"):
        student = DPIQAStudent(config, pretrained_backbone=True).eval()
    messages = [r.getMessage() for r in caplog.records if r.name == "models.student"]
    assert len(messages) == 1
    assert "ImageNet weights for test_efficientnet could not be fetched" in messages[0]
    assert "continuing with pretrained=False" in messages[0]
    with torch.inference_mode():
        score, quality_map = student(images(2))
    assert torch.isfinite(score).all() and tuple(quality_map.shape) == (2, 8, 16, 16)
