"""The GPU code paths, run where a CUDA GPU is (`pytest -m gpu`; skipped elsewhere, see conftest.py):
nvJPEG decoding against PIL, bf16 and channels_last scores against fp32, and a training step under bf16
autocast. Each states its tolerance; none of them can run on this project's CPU machines."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from dpiqa import models
from dpiqa.engine.stages.decode import decode_image
from dpiqa.engine.stages.device_decode import decode_on_device
from dpiqa.models.preprocessing import Preprocessing
from dpiqa.models.run_options import RunOptions

pytestmark = pytest.mark.gpu

# nvJPEG and libjpeg may round differently (one level in places) and the resizes differ a little at edges.
DECODE_MEAN_ABS_LEVELS = 2.0
# bf16 keeps 8 bits of mantissa: scores of a random-weights model agree with fp32 to about 1% of the scale.
BF16_SCORE_TOLERANCE = 0.02  # of mos_scale
CHANNELS_LAST_SCORE_TOLERANCE = 1e-3  # of mos_scale: the same fp32 arithmetic in another memory order


def _photos(n: int, size: tuple[int, int] = (160, 120)) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        y, x = np.mgrid[0 : size[1], 0 : size[0]]
        img = np.stack([(x * 255 // size[0]), (y * 255 // size[1]), ((x + y + 7 * i) % 256)], -1).astype(np.uint8)
        img = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def test_nvjpeg_decode_matches_pil():
    pre = Preprocessing(size=(96, 96))
    blobs = _photos(8)
    pixels, _, failures = decode_on_device(blobs, pre, torch.device("cuda"))
    assert pixels.device.type == "cuda" and not failures
    for i, blob in enumerate(blobs):
        cpu, _, _, _ = decode_image(blob, pre)
        diff = np.abs(pixels[i].cpu().numpy().astype(int) - cpu.astype(int))
        assert diff.mean() <= DECODE_MEAN_ABS_LEVELS, (i, diff.mean())


@pytest.mark.parametrize("name", ["dpiqa-student-tiny", "dpiqa-student"])
def test_bf16_and_channels_last_scores_match_fp32(name):
    info = models.describe(name)
    h, w = info.preprocessing.size
    images = np.random.default_rng(1).integers(0, 256, (4, h, w, 3), dtype=np.uint8)
    model = models.load_model(name)
    fp32 = models.Scorer(model, RunOptions(device="cuda", precision="fp32"))(images).scores
    bf16 = models.Scorer(models.load_model(name), RunOptions(device="cuda", precision="bf16"))(images).scores
    nhwc = models.Scorer(models.load_model(name), RunOptions(device="cuda", precision="fp32", channels_last=True))(
        images
    ).scores
    assert np.isfinite(fp32).all()
    assert np.abs(bf16 - fp32).max() <= BF16_SCORE_TOLERANCE * info.mos_scale
    assert np.abs(nhwc - fp32).max() <= CHANNELS_LAST_SCORE_TOLERANCE * info.mos_scale


def test_a_training_step_under_bf16_autocast_on_cuda():
    from dpiqa.engine.training.loop import _autocast, resolve_precision
    from dpiqa.models.distill import teacher_loss

    device = torch.device("cuda")
    assert resolve_precision("auto", device) in ("bf16", "fp16")
    autocast, precision = _autocast("bf16", device)
    model = models.build("dpiqa-student-tiny").to(device).train()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    h, w = model.config.preprocessing.size
    x = torch.rand(4, 3, h, w, device=device)
    target = torch.rand(4, device=device)
    with autocast:
        score, _ = model(x)
        loss = teacher_loss(score.float(), target)
    loss.backward()
    optimizer.step()
    assert precision == "bf16" and torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
