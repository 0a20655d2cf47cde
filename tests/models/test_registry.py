"""Every named configuration in `models.MODELS`: tiny ones run on the CPU, all build on the meta device."""

from __future__ import annotations

import pytest
import torch
from expected import SHAPES

from dpiqa import models

TINY = [name for name in models.MODELS if name.endswith("-tiny")]


def test_every_architecture_has_a_tiny_configuration() -> None:
    assert {models.MODELS[name][0] for name in TINY} == set(models.ARCHITECTURES)


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_gives_finite_scores_and_maps(name: str) -> None:
    model = models.build(name).eval()
    config = model.config
    x = torch.rand(2, 3, *config.preprocessing.size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        score, quality_map = model(x)
    assert tuple(score.shape) == (2,) and torch.isfinite(score).all()
    assert tuple(quality_map.shape) == (2, *config.map_shape) and torch.isfinite(quality_map).all()


@pytest.mark.parametrize("name", list(models.MODELS))
def test_every_configuration_builds_on_meta_with_its_shapes(name: str) -> None:
    model = models.build(name, device="meta").eval()
    size, map_shape = SHAPES[name]
    x = torch.empty(1, 3, *size, device="meta")
    with torch.no_grad():
        score, quality_map = model(x)
    assert tuple(score.shape) == (1,)
    assert tuple(quality_map.shape) == (1, *map_shape)
    info = models.describe(name)  # and the driver's description of it says the same, without building it
    assert (info.preprocessing.size, info.map_shape) == (size, map_shape)
    assert info.architecture == model.architecture
    assert set(SHAPES) == set(models.MODELS)


def test_full_size_configurations_have_the_spec_input_and_map() -> None:
    for name in ("dpiqa-teacher", "dpiqa-student"):
        info = models.describe(name)
        assert info.preprocessing.size == (512, 512) and info.preprocessing.value_range == (0.0, 1.0)
        assert info.map_shape == (8, 64, 64)
