"""The checkpoint every new user scores with first (`--model demo`, `models/checkpoints/demo/`): within the
issue's size budget, stored as its card says, and ranking real photographs' distortions by strength through
the engine's own decoder and scorer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from dpiqa import models
from dpiqa.models.registry import SHIPPED


@pytest.fixture(scope="module")
def demo():
    directory = SHIPPED["demo"]
    return directory, json.loads((directory / "card.json").read_text())


def test_the_shipped_checkpoint_fits_its_budget_and_holds_what_its_card_says(demo):
    """At most 25 MB on disk (the issue's budget); weights stored at the card's dtype, loaded as float32 (the
    content hash is checked on load); the parameter count the card states."""
    directory, card = demo
    assert sum(p.stat().st_size for p in directory.iterdir()) <= 25e6
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        stored = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    assert stored == {"F16"} and card["weights_dtype"] == "float16"
    model = models.load_model("demo")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert sum(p.numel() for p in model.parameters()) == card["parameters"]["total"]


def test_the_shipped_model_ranks_real_distortions_by_strength(demo):
    """Two of the demo's photographs, each distortion family at levels 0-5 as the demo corpus holds them (its own
    samples: lossless PNG, a seed per level), decoded and scored as `dpiqa score` does: every family's scores fall
    with its strength (Spearman's rho <= -0.8 per photograph and family: `dpiqa demo` ranks them at -0.94 to
    -1.00), and the strongest level of each scores below the clean photograph."""
    from scipy.stats import spearmanr

    from dpiqa.engine.demo import PHOTOGRAPHS, reference, samples
    from dpiqa.engine.stages.decode import decode_image

    scorer = models.load_scorer("demo")
    photos = [(source, name, loader) for source, name, loader in PHOTOGRAPHS if name in ("astronaut", "camera")]
    assert len(photos) == 2
    for source, name, loader in photos:
        corpus = {key: files["png"] for key, files in samples(source, name, reference(loader))}
        for kind in ("gaussian_blur", "gaussian_noise", "jpeg", "jpeg2000", "contrast", "underexposure"):
            keys = [f"{name}/reference", *(f"{name}/{kind}-{level}" for level in range(1, 6))]
            pixels = np.stack([decode_image(corpus[k], scorer.preprocessing).pixels for k in keys])
            scores = scorer(pixels).scores
            rho = spearmanr(range(6), scores).statistic
            assert rho <= -0.8 and scores[5] < scores[0], (name, kind, rho, scores.round(3).tolist())
