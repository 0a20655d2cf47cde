"""The JPEG block grid measured before the resize (`aux_features=...+jpeg_grid`): the statistic by hand and on
real JPEGs, the decoders that measure it (PIL, the device decoder), the student that reads it, and the
engine's scoring path that hands it over."""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from dpiqa.engine.stages.decode import DecodeStage, decode_image
from dpiqa.engine.stages.device_decode import decode_on_device
from dpiqa.models.preprocessing import Preprocessing, jpeg_grid
from dpiqa.models.student import DPIQAStudent, StudentConfig

GRID = Preprocessing(size=(64, 64), interpolation="bicubic", statistics=("jpeg_grid",))


def jpeg(pixels: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def photo() -> np.ndarray:
    import skimage.data

    return np.ascontiguousarray(skimage.data.chelsea())  # 300 x 451, a real photograph


def luminance(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32)


def test_jpeg_grid_by_hand():
    """Columns of 8-pixel blocks alternating 0 and 10: every step across a block edge (phase 7) is 10, every
    step inside a block 0, so across columns the statistic is log((10 + 0.5) / (0 + 0.5)); the rows are
    constant, so across rows it is log(0.5 / 0.5) = 0. An image too small for two blocks gives 0."""
    gray = np.repeat(np.tile([0.0, 10.0], 4), 8)[None, :].repeat(24, 0).astype(np.float32)  # 24 x 64
    assert jpeg_grid(gray) == pytest.approx([math.log(21.0), 0.0])
    assert jpeg_grid(torch.from_numpy(gray)) == pytest.approx([math.log(21.0), 0.0])
    assert jpeg_grid(np.zeros((10, 10), np.float32)) == [0.0, 0.0]


def test_jpeg_grid_rises_with_compression_and_survives_a_crop():
    """On a real photograph: about 0 uncompressed and after blur; higher at every lower JPEG quality (the demo
    corpus's levels); a crop after compression that shifts the grid by 3 pixels finds it at its new phase."""
    from dpiqa.engine.distortions import distort

    pixels = photo()
    clean = jpeg_grid(np.asarray(Image.fromarray(pixels).convert("L"), np.float32))
    blurred = jpeg_grid(np.asarray(Image.fromarray(distort(pixels, "gaussian_blur", 3)).convert("L"), np.float32))
    assert max(clean + blurred) < 0.1
    strengths = [np.mean(jpeg_grid(luminance(jpeg(pixels, q)))) for q in (50, 30, 18, 10, 5)]
    assert strengths[0] > 0.2 and all(b > a for a, b in zip(strengths[:-1], strengths[1:], strict=True)), strengths
    compressed = luminance(jpeg(pixels, 10))
    np.testing.assert_allclose(jpeg_grid(compressed[3:, 3:]), jpeg_grid(compressed), atol=0.05)


def test_decoder_measures_the_grid_at_full_size_before_the_resize():
    """A model that reads the grid gets it measured on the whole decoded JPEG (no DCT-domain downscaling,
    which would erase it), beside the pixels resized as for any model; a model that does not gets none."""
    data = jpeg(photo(), 10)
    decoded = decode_image(data, GRID)
    assert decoded.pixels.shape == (64, 64, 3)
    np.testing.assert_allclose(decoded.statistics, jpeg_grid(luminance(data)), rtol=1e-6)
    # about 512 rows sampled: the same as every row, to 0.01 (here 300 rows: all of them)
    big = np.asarray(Image.fromarray(photo()).resize((1800, 1200)).convert("L"))
    big = luminance(jpeg(np.stack([big] * 3, -1), 10))
    np.testing.assert_allclose(jpeg_grid(big), jpeg_grid(big, lines=10_000), atol=0.01)
    assert decoded.statistics.min() > 0.5
    # measured on the 64 x 64 input instead, the grid is gone
    assert max(jpeg_grid(np.asarray(Image.fromarray(decoded.pixels).convert("L"), np.float32))) < 0.3
    # the pixels: the full decode resized (with PIL's integer reduction first), not a downscaled draft decode
    full = Image.open(io.BytesIO(data)).convert("RGB")
    np.testing.assert_array_equal(
        decoded.pixels, np.asarray(full.resize((64, 64), Image.Resampling.BICUBIC, None, 2.0))
    )
    assert decode_image(data, dataclasses.replace(GRID, statistics=())).statistics.shape == (0,)


def test_decode_stage_adds_a_statistics_column_only_for_models_that_read_it():
    data = [jpeg(photo(), q) for q in (90, 10)]
    batch = {
        "index": np.arange(3),
        "data": np.array([*data, b"not an image"], dtype=object),
        "ext": np.array(["jpg"] * 3, dtype=object),
        "status": np.array(["ok"] * 3, dtype=object),
        "error": np.array([None] * 3, dtype=object),
    }
    out = DecodeStage(GRID)(batch)
    assert out["statistics"].shape == (3, 2) and out["statistics"].dtype == np.float32
    assert out["statistics"][1].min() > out["statistics"][0].max() + 0.3  # quality 10 over quality 90
    assert list(out["status"]) == ["ok", "ok", "not_an_image"] and not out["statistics"][2].any()
    assert "statistics" not in DecodeStage(dataclasses.replace(GRID, statistics=()))(batch)


def test_device_decoder_measures_what_the_cpu_decoder_measures():
    """The GPU path (run here on the CPU device) measures the grid on its own decode, before its resize."""
    blobs = [jpeg(photo(), q) for q in (75, 18, 5)]
    pixels, statistics, failures = decode_on_device(blobs, GRID, torch.device("cpu"))
    assert not failures and pixels.shape == (3, 64, 64, 3)
    cpu = np.stack([decode_image(b, GRID).statistics for b in blobs])
    np.testing.assert_allclose(statistics, cpu, atol=0.02)


def tiny_grid_student() -> DPIQAStudent:
    torch.manual_seed(0)
    config = StudentConfig(
        backbone="test_efficientnet", image_size=64, map_size=8, head_hidden=16, aux_features="nss+exposure+jpeg_grid"
    )
    return DPIQAStudent(config).eval()


def test_student_reads_the_statistics_as_two_more_channels_and_refuses_to_go_without():
    student = tiny_grid_student()
    assert student.config.preprocessing.statistics == ("jpeg_grid",)
    assert student.map_head.in_channels == student.backbone.num_features + 14 + 7 + 2
    x = torch.rand(2, 3, 64, 64)
    statistics = torch.tensor([[0.0, 0.0], [1.5, 1.2]])
    with torch.no_grad():
        features = student.backbone_features(x, statistics)
        assert torch.equal(features[:, -2:], statistics[:, :, None, None].expand(-1, -1, *features.shape[-2:]))
        same, _ = student(x[[0, 0]], statistics=statistics)
    assert same[0] != same[1]  # one image, two grid strengths: two scores
    with pytest.raises(ValueError, match=r"reads 2 statistics per image measured before the resize \(jpeg_grid"):
        student(x)


def test_engine_scores_a_jpeg_with_the_statistics_its_decoder_measured(tmp_path):
    """`dpiqa score`'s path (decode stage -> score stage) on a checkpoint saved with save_pretrained: each score
    is the model's on the pixels and the statistics of that image, not of a neighbour or of none."""
    from dpiqa import models
    from dpiqa.engine.stages.score import ScoreStage
    from dpiqa.models.run_options import RunOptions

    student = tiny_grid_student()
    student.save_pretrained(str(tmp_path / "ckpt"))
    data = [jpeg(photo(), q) for q in (90, 30, 5)]
    batch = {
        "index": np.arange(3),
        "data": np.array(data, dtype=object),
        "ext": np.array(["jpg"] * 3, dtype=object),
        "status": np.array(["ok"] * 3, dtype=object),
        "error": np.array([None] * 3, dtype=object),
    }
    scorer = models.load_scorer(str(tmp_path / "ckpt"), RunOptions(device="cpu", precision="fp32"))
    decoded = DecodeStage(scorer.preprocessing)(batch)
    scored = ScoreStage(str(tmp_path / "ckpt"), RunOptions(device="cpu", precision="fp32"), batch_size=2)(decoded)
    assert list(scored["status"]) == ["ok"] * 3 and "statistics" not in scored
    for i, blob in enumerate(data):
        one = decode_image(blob, scorer.preprocessing)
        x = scorer.preprocessing.to_tensor(torch.from_numpy(one.pixels[None].copy()))
        with torch.no_grad():
            want, _ = student(x, statistics=torch.from_numpy(one.statistics[None]))
        assert scored["score"][i] == pytest.approx(float(want[0]) * student.config.mos_scale, abs=1e-4)
