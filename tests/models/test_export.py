"""ONNX export of the student: PyTorch parity at batch 1 and 5, identity, the onnxruntime scorer, refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from expected import content_sha256

from dpiqa import models
from dpiqa.models import checkpoint
from dpiqa.models.export import (
    MAP_TOLERANCE,
    SCORE_TOLERANCE,
    ExportGraph,
    ExportMismatchError,
    export_onnx,
    file_sha256,
    random_images,
    validate,
)
from dpiqa.models.onnx_scorer import INPUT_NAME, OnnxScorer
from dpiqa.models.preprocessing import Preprocessing
from dpiqa.models.run_options import RunOptions
from dpiqa.models.student import DPIQAStudent, StudentConfig

TINY = "dpiqa-student-tiny"
# A real timm backbone at a reduced size, with a non-default value range and MOS scale, so that the graph's
# built-in preprocessing and score scaling are exercised beyond the defaults.
B0 = StudentConfig(
    backbone="efficientnet_b0",
    image_size=128,
    map_size=16,
    head_hidden=64,
    value_range=(-1.0, 1.0),
    mos_scale=5.0,
)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "export"
    card = export_onnx(TINY, str(out), validate_batch=5)
    return out, card


@pytest.fixture(scope="module")
def b0_export(tmp_path_factory):
    """An EfficientNet-B0 student saved with save_pretrained, exported from its checkpoint folder."""
    root = tmp_path_factory.mktemp("b0")
    torch.manual_seed(1)
    student = DPIQAStudent.from_config(B0)
    ckpt_card = student.save_pretrained(str(root / "ckpt"), card={"training": "none (random init)"})
    card = export_onnx(str(root / "ckpt"), str(root / "export"), validate_batch=5)
    return root / "export", card, root / "ckpt", ckpt_card


def batch_axis(path) -> str | int:
    dim = (
        onnx.load(str(path / checkpoint.ONNX_NAME), load_external_data=False)
        .graph.input[0]
        .type.tensor_type.shape.dim[0]
    )
    return dim.dim_param or dim.dim_value


@pytest.mark.parametrize("which", ["tiny", "b0"])
def test_onnx_scorer_matches_pytorch_at_batch_1_and_5(which, tiny_export, b0_export):
    if which == "tiny":
        export_dir, card, source = *tiny_export, TINY
    else:
        export_dir, card, ckpt, _ = b0_export
        source = str(ckpt)
    assert batch_axis(export_dir) == "batch"
    onnx_scorer = models.load_scorer(str(export_dir))
    torch_scorer = models.load_scorer(source, RunOptions(device="cpu", precision="fp32"))
    assert isinstance(onnx_scorer, OnnxScorer)
    assert onnx_scorer.preprocessing == torch_scorer.preprocessing and onnx_scorer.mos_scale == torch_scorer.mos_scale
    model = torch_scorer.model
    images = random_images(5, onnx_scorer.preprocessing, seed=123)  # not the export's validation images
    worst = {"score": 0.0, "map": 0.0}
    for batch in (1, 5):
        x = images[:batch]
        got = onnx_scorer(x).scores
        want = torch_scorer(x).scores
        assert got.shape == (batch,) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=SCORE_TOLERANCE * onnx_scorer.mos_scale)
        # the raw map output against the model's own forward on hand-made NCHW input in the value range
        lo, hi = onnx_scorer.preprocessing.value_range
        nchw = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0 * (hi - lo) + lo
        with torch.inference_mode():
            score, quality_map = model(nchw)
        np.testing.assert_allclose(
            got, score.numpy() * onnx_scorer.mos_scale, rtol=0, atol=SCORE_TOLERANCE * onnx_scorer.mos_scale
        )
        (onnx_map,) = onnx_scorer.session.run(["map"], {INPUT_NAME: x})
        assert onnx_map.shape == (batch, 8, 16, 16)
        np.testing.assert_allclose(onnx_map, quality_map.numpy(), rtol=0, atol=MAP_TOLERANCE)
        worst["score"] = max(worst["score"], float(np.abs(got - want).max()))
        worst["map"] = max(worst["map"], float(np.abs(onnx_map - quality_map.numpy()).max()))
    # Random weights make outputs depend only weakly on the image; ONNX must reproduce that dependence,
    # not only the mean: its error is far below the differences between images.
    scores, maps = onnx_scorer.session.run(["score", "map"], {INPUT_NAME: images})
    assert worst["score"] < np.ptp(scores) / 100
    assert worst["map"] < np.abs(maps[1:] - maps[0]).max() / 100
    # the export's own validation ran at the same batch sizes and is recorded in the card
    validation = card["onnx"]["validation"]
    assert set(validation["batches"]) == {"1", "5"}
    assert all(b["score_max_abs_diff"] <= validation["tolerance"]["score"] for b in validation["batches"].values())


def test_scorer_returns_float16_maps_and_takes_read_only_arrays(tiny_export):
    scorer = OnnxScorer(str(tiny_export[0]))
    images = random_images(3, scorer.preprocessing, seed=5)
    images.flags.writeable = False  # as Ray hands them out
    out = scorer(images, return_map=True)
    assert out.maps.dtype == np.float16 and out.maps.shape == (3, 8, 16, 16)
    assert scorer(images[:0]).scores.shape == (0,)
    with pytest.raises(ValueError, match=r"expected uint8 images \(B, 64, 64, 3\)"):
        scorer(random_images(2, Preprocessing((32, 32)), seed=0))


def test_static_batch_export_scores_any_batch_in_chunks(tiny_export, tmp_path):
    card = export_onnx(TINY, str(tmp_path / "static"), dynamic_batch=False, batch_size=2)
    assert batch_axis(tmp_path / "static") == 2 and card["onnx"]["batch_size"] == 2
    assert set(card["onnx"]["validation"]["batches"]) == {"2"}
    static, dynamic = OnnxScorer(str(tmp_path / "static")), OnnxScorer(str(tiny_export[0]))
    images = random_images(5, static.preprocessing, seed=9)  # 2 + 2 + 1 padded
    np.testing.assert_allclose(static(images).scores, dynamic(images).scores, rtol=0, atol=SCORE_TOLERANCE * 100)


def test_describe_gives_the_exports_identity_from_config_and_card_only(b0_export, tmp_path):
    export_dir, card, ckpt, ckpt_card = b0_export
    files = {p.name for p in export_dir.iterdir()}
    assert files == {"config.json", "model.onnx", "card.json"}
    assert (export_dir / "config.json").read_text() == (ckpt / "config.json").read_text()
    assert card["format"] == "onnx"
    assert card["sha256"] == content_sha256(export_dir, ("config.json", "model.onnx"))
    assert card["onnx"]["sha256"] == file_sha256(export_dir / "model.onnx")
    assert card["source"]["checkpoint_hash"] == ckpt_card["sha256"] != card["sha256"]
    assert card["source"]["weights_dtype"] == "float32" and "weights_dtype" not in card  # the graph's weights
    assert card["training"] == "none (random init)"  # the checkpoint's card travels with the export
    assert card["onnx"]["inputs"]["images"]["shape"] == ["batch", 128, 128, 3]
    # only config.json and card.json are read: describe works with the graph absent
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.json", "card.json"):
        shutil.copy(export_dir / name, partial / name)
    info = models.describe(str(partial))
    assert info.runtime == "onnx" and info.checkpoint_hash == card["sha256"]
    assert info.preprocessing == B0.preprocessing and info.mos_scale == 5.0 and info.map_shape == (8, 16, 16)
    assert models.describe(str(ckpt)).runtime == "torch"


def test_tampered_export_is_refused(tiny_export, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_export[0], copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-10] ^= 0xFF  # a weight byte
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="content hash"):
        OnnxScorer(str(copy))


def test_validation_fails_on_a_graph_that_differs(tiny_export):
    """The tolerance is tight enough to catch the classic bugs: a missing 0..255 scaling, other weights."""
    path = tiny_export[0] / "model.onnx"
    model = models.build(TINY).eval()
    report = validate(path, ExportGraph(model), (1, 3))
    assert set(report["batches"]) == {"1", "3"}
    unscaled = ExportGraph(model)
    unscaled.preprocessing = Preprocessing((64, 64), value_range=(0.0, 255.0))
    with pytest.raises(ExportMismatchError, match="beyond tolerance"):
        validate(path, unscaled, (1,))
    with pytest.raises(ExportMismatchError, match="beyond tolerance"):
        validate(path, ExportGraph(models.build(TINY, seed=1).eval()), (1,))


def test_teacher_export_is_refused_with_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="only the student"):
        export_onnx("dpiqa-teacher-tiny", str(tmp_path / "a"))
    teacher_ckpt = tmp_path / "teacher"
    teacher_ckpt.mkdir()
    (teacher_ckpt / "config.json").write_text(json.dumps({"architecture": "dpiqa-teacher"}))
    with pytest.raises(ValueError, match="'dpiqa-teacher' cannot be exported; only the student"):
        export_onnx(str(teacher_ckpt), str(tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_bad_export_requests_are_refused(tiny_export, tmp_path):
    with pytest.raises(ValueError, match="already holds config.json, model.onnx, card.json"):
        export_onnx(TINY, str(tiny_export[0]))
    with pytest.raises(ValueError, match="--output is a folder"):
        export_onnx(TINY, str(tmp_path / "student.onnx"))
    with pytest.raises(ValueError, match="format must be one of onnx"):
        export_onnx(TINY, str(tmp_path / "x"), format="tflite")
    with pytest.raises(ValueError, match="already an ONNX export"):
        export_onnx(str(tiny_export[0]), str(tmp_path / "y"))
    models.build(TINY).save_pretrained(str(tmp_path / "ckpt"))
    with pytest.raises(ValueError, match="holds a PyTorch checkpoint"):
        export_onnx(TINY, str(tmp_path / "ckpt"), overwrite=True)


def test_runtime_options_that_do_not_fit_the_model_are_refused(tiny_export):
    export = str(tiny_export[0])
    with pytest.raises(ValueError, match="needs an ONNX export; create one with `dpiqa export"):
        models.load_scorer(TINY, RunOptions(runtime="onnx"))
    with pytest.raises(ValueError, match="runs on onnxruntime only"):
        models.load_scorer(export, RunOptions(runtime="torch"))
    with pytest.raises(ValueError, match="device cuda, precision bf16, compile apply to the torch runtime"):
        models.load_scorer(export, RunOptions(device="cuda", precision="bf16", compile=True))
    with pytest.raises(ValueError, match="has no PyTorch weights"):
        models.load_model(export)
    assert isinstance(models.load_scorer(export, RunOptions(runtime="onnx")), OnnxScorer)


def test_image_statistics_export_with_a_dynamic_batch(tmp_path):
    """A student with the natural-scene and exposure statistics and the JPEG grid measured before the resize
    (`nss+exposure+jpeg_grid`: a second graph input) exports with a dynamic batch and scores like PyTorch at
    batch 1 and 5 (the export's own validation, and again here on other images and statistics)."""
    torch.manual_seed(3)
    config = StudentConfig(
        backbone="test_efficientnet", image_size=64, map_size=8, head_hidden=16, aux_features="nss+exposure+jpeg_grid"
    )
    DPIQAStudent.from_config(config).save_pretrained(str(tmp_path / "ckpt"))
    card = export_onnx(str(tmp_path / "ckpt"), str(tmp_path / "export"), validate_batch=5)
    assert batch_axis(tmp_path / "export") == "batch"
    assert card["onnx"]["inputs"]["statistics"]["shape"] == ["batch", 2]
    validation = card["onnx"]["validation"]
    assert set(validation["batches"]) == {"1", "5"}
    onnx_scorer = models.load_scorer(str(tmp_path / "export"))
    torch_scorer = models.load_scorer(str(tmp_path / "ckpt"), RunOptions(device="cpu", precision="fp32"))
    images = random_images(5, onnx_scorer.preprocessing, seed=7)
    statistics = np.random.default_rng(8).uniform(0, 2, (5, 2)).astype(np.float32)
    for batch in (1, 5):
        np.testing.assert_allclose(
            onnx_scorer(images[:batch], statistics=statistics[:batch]).scores,
            torch_scorer(images[:batch], statistics=statistics[:batch]).scores,
            rtol=0,
            atol=SCORE_TOLERANCE * onnx_scorer.mos_scale,
        )
    # the statistics reach the score: other statistics, another score (both runtimes alike)
    moved = onnx_scorer(images, statistics=statistics[::-1].copy()).scores
    assert np.abs(moved - onnx_scorer(images, statistics=statistics).scores).max() > 100 * SCORE_TOLERANCE
    with pytest.raises(ValueError, match=r"expected statistics \(5, 2\), got none"):
        onnx_scorer(images)
