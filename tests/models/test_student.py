"""The student: spec sizes on the meta device, round trip, a training step, offline ImageNet weights."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch

from dpiqa import models
from dpiqa.models.backbones import PretrainedWeightsError
from dpiqa.models.checkpoint import round_weights
from dpiqa.models.student import DPIQAStudent, StudentConfig


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


def test_weights_stored_at_half_precision_load_as_the_rounded_float32_model(tiny: DPIQAStudent, tmp_path: Path) -> None:
    """`save_pretrained(weights_dtype="float16")` halves the weights file; loading gives the float32 model whose
    weights are the originals rounded to float16 (exactly: the cast back is lossless), so it scores as that
    rounded model does, bit for bit, and the card says how the weights are stored."""
    full = tiny.save_pretrained(str(tmp_path / "fp32"))
    half = tiny.save_pretrained(str(tmp_path / "fp16"), weights_dtype="float16")
    assert half["weights_dtype"] == "float16" and "weights_dtype" not in full
    sizes = {name: (tmp_path / name / "model.safetensors").stat().st_size for name in ("fp32", "fp16")}
    assert sizes["fp16"] < 0.52 * sizes["fp32"]
    loaded = models.load_model(str(tmp_path / "fp16"))
    rounded = models.build("dpiqa-student-tiny").eval()
    rounded.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in tiny.state_dict().items()})
    # what a training job measures before it saves (`round_weights`) is that model too
    in_place = round_weights(copy.deepcopy(tiny), "float16")
    assert all(torch.equal(v, rounded.state_dict()[k]) for k, v in in_place.state_dict().items())
    for k, v in loaded.state_dict().items():
        assert v.dtype == tiny.state_dict()[k].dtype, k
        assert torch.equal(v, rounded.state_dict()[k]), k
    x = images()
    with torch.inference_mode():
        assert torch.equal(loaded(x)[0], rounded(x)[0])
        assert not torch.equal(loaded(x)[0], tiny(x)[0])  # the rounding is real: this is not the float32 file
    with pytest.raises(ValueError, match="weights_dtype 'float17' is not one of float16, bfloat16, float32"):
        tiny.save_pretrained(str(tmp_path / "bad"), weights_dtype="float17")


def test_training_step_reaches_every_part(tiny: DPIQAStudent) -> None:
    tiny.train()
    score, quality_map = tiny(images(2))
    loss = torch.nn.functional.mse_loss(score, torch.tensor([0.3, 0.7])) + quality_map.mean()
    loss.backward()
    no_grad = [n for n, p in tiny.named_parameters() if p.grad is None or not p.grad.any()]
    assert no_grad == []


def test_default_backbone_is_torchvisions_efficientnet_b7() -> None:
    """The network the DP-IQA authors used: torchvision's EfficientNet-B7 (its BatchNorm eps 1e-3, stochastic
    depth 0.2), so that torchvision's IMAGENET1K_V1 weights load into it unchanged."""
    import torchvision

    student = DPIQAStudent.from_config(StudentConfig(), device="meta")
    reference = torchvision.models.efficientnet_b7().features
    assert [tuple(t.shape) for t in student.backbone.state_dict().values()] == [
        tuple(t.shape) for t in reference.state_dict().values()
    ]
    assert list(student.backbone.state_dict()) == [f"features.{k}" for k in reference.state_dict()]
    assert student.backbone.features[0][1].eps == 1e-3
    depths = [m.p for m in student.backbone.modules() if type(m).__name__ == "StochasticDepth"]
    assert depths and max(depths) == pytest.approx(0.2 * (len(depths) - 1) / len(depths))


def test_pretrained_weights_that_cannot_be_had_stop_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Offline (no route to download.pytorch.org or the Hub): no silent random initialisation."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    with pytest.raises(PretrainedWeightsError) as exc:
        DPIQAStudent(
            StudentConfig(backbone="torchvision/mobilenet_v3_small", map_size=4, head_hidden=8, image_size=64),
            pretrained_backbone=True,
        )
    message = str(exc.value)
    assert "\n" not in message
    assert "MobileNet_V3_Small_Weights.IMAGENET1K_V1" in message and "download.pytorch.org" in message
    assert "--backbone-weights" in message and "--no-pretrained" in message
    with pytest.raises(PretrainedWeightsError, match="timm's pretrained mobilenetv3_small_100 .*--no-pretrained"):
        DPIQAStudent(
            StudentConfig(backbone="mobilenetv3_small_100", map_size=4, head_hidden=8, image_size=64),
            pretrained_backbone=True,
        )
    with pytest.raises(PretrainedWeightsError, match="test_efficientnet"):  # timm has no weights for it at all
        DPIQAStudent(
            StudentConfig(backbone="test_efficientnet", map_size=4, head_hidden=8, image_size=64),
            pretrained_backbone=True,
        )


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_backbone_weights_from_a_file(tmp_path: Path, suffix: str) -> None:
    """`--backbone-weights`: a torchvision weight file (a whole classifier's state dict, head included) or a
    safetensors file, read through fsspec."""
    import safetensors.torch
    import torchvision

    torch.manual_seed(3)
    classifier = torchvision.models.mobilenet_v3_small()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(classifier.state_dict(), path)
    else:
        safetensors.torch.save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(path))
    config = StudentConfig(backbone="torchvision/mobilenet_v3_small", map_size=4, head_hidden=8, image_size=64)
    student = DPIQAStudent(config, pretrained_backbone=True, weights_file=f"file://{path}")
    for name, tensor in classifier.features.state_dict().items():
        assert torch.equal(student.backbone.state_dict()[f"features.{name}"], tensor), name
    other = torchvision.models.resnet18()
    torch.save(other.state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(PretrainedWeightsError, match="does not fit backbone torchvision/mobilenet_v3_small"):
        DPIQAStudent(config, pretrained_backbone=True, weights_file=str(tmp_path / "wrong.pth"))


def test_nss_features_see_noise_and_blur():
    """The statistics a frozen backbone is complemented with: noise spreads and decorrelates the MSCN
    coefficients, blur correlates neighbours and lowers local contrast; shape is the grid's."""
    import skimage.data

    from dpiqa.models.student import NSS_CHANNELS, nss_features

    photo = torch.as_tensor(skimage.data.astronaut()[:224, :224].copy()).permute(2, 0, 1)[None].float() / 255
    noisy = (photo + 0.1 * torch.randn(photo.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    blurred = torch.nn.functional.avg_pool2d(photo, 5, stride=1, padding=2, count_include_pad=False)
    clean, noise, blur = (nss_features(x, (4, 4)).mean((0, 2, 3)) for x in (photo, noisy, blurred))
    assert nss_features(photo, (4, 4)).shape == (1, NSS_CHANNELS, 4, 4)
    assert noise[2] < clean[2] and noise[3] < clean[3]  # neighbour products: decorrelated by noise
    assert blur[2] > clean[2] and blur[3] > clean[3]  # ... and correlated by blur
    assert noise[6] > clean[6] > blur[6]  # log local contrast


def test_exposure_features_by_hand():
    """A 4x4 image on a 2x2 grid: the top-left cell burnt white, the bottom-right crushed black, the rest
    mid-grey; a pure red pixel (luminance 0.299) is clipped (one channel at 255) without being white."""
    from dpiqa.models.student import EXPOSURE_CHANNELS, exposure_features

    image = torch.full((1, 3, 4, 4), 0.5)
    image[..., :2, :2] = 1.0
    image[..., 2:, 2:] = 0.0
    image[0, :, 0, 3] = torch.tensor([1.0, 0.0, 0.0])
    image[0, :, 3, 3] = 4 / 255  # still crushed: every channel at or below 5/255
    out = exposure_features(image, (2, 2))
    assert out.shape == (1, EXPOSURE_CHANNELS, 2, 2)
    top_right = (3 * 0.5 + 0.299) / 4
    luminance = [[1.0, top_right], [0.5, 4 / 255 / 4]]
    torch.testing.assert_close(out[0, 0], torch.tensor(luminance), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0, 1], torch.tensor([[1.0, 0.25], [0.0, 0.0]]))
    torch.testing.assert_close(out[0, 2], torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
    pixels = [1.0] * 4 + [0.5] * 7 + [0.299] + [0.0] * 3 + [4 / 255]
    for channel, expected in zip(
        range(3, 7),
        [np.mean(pixels), 5 / 16, 4 / 16, np.std(pixels, ddof=1)],
        strict=True,
    ):
        torch.testing.assert_close(out[0, channel], torch.full((2, 2), float(expected)), atol=1e-5, rtol=0)


def test_exposure_features_rank_over_exposure():
    """The corpus's over-exposure (stored values x 2^(EV / 2.2), clipped) raises the clipped fraction with
    every step, on a real photograph."""
    import skimage.data

    from dpiqa.engine.distortions import distort
    from dpiqa.models.student import exposure_features

    photo = skimage.data.astronaut()
    clipped = []
    for level in range(6):
        img = photo if level == 0 else distort(photo, "overexposure", level)
        x = torch.as_tensor(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255
        clipped.append(float(exposure_features(x, (4, 4))[0, 4, 0, 0]))
    assert all(b > a for a, b in zip(clipped[:-1], clipped[1:], strict=True)), clipped


@pytest.mark.parametrize("aux", ["nss", "nss+exposure"])
def test_aux_features_widen_the_head_input(aux):
    from dpiqa.models.student import DPIQAStudent, StudentConfig, aux_channels

    config = StudentConfig(backbone="test_efficientnet", map_size=4, head_hidden=8, image_size=32)
    plain = DPIQAStudent(config)
    widened = DPIQAStudent(dataclasses.replace(config, aux_features=aux))
    assert widened.map_head.in_channels == plain.map_head.in_channels + {"nss": 14, "nss+exposure": 21}[aux]
    assert aux_channels(aux) == {"nss": 14, "nss+exposure": 21}[aux]
    score, qmap = widened(torch.rand(2, 3, 32, 32))
    assert score.shape == (2,) and qmap.shape == (2, 8, 4, 4)
    with pytest.raises(ValueError, match="aux_features"):
        DPIQAStudent(dataclasses.replace(config, aux_features="sift"))


@pytest.mark.parametrize(
    ("grid", "map_size"),
    [(16, 8), (16, 16), (8, 4), (7, 64), (12, 8), (16, 32)],  # kept-pixel step 4, 2, 4 (1x1 path); 7/32, 3, 1
)
def test_map_head_equals_the_spec_transposed_conv_then_nearest_resize(grid: int, map_size: int) -> None:
    """The map is the spec's ConvTranspose2d(k3, s2, p1, op1) -> ReLU -> nearest resize, whichever way it is
    computed (a map smaller than the doubled grid by an even step takes the 1x1 shortcut)."""
    config = StudentConfig(backbone="test_efficientnet", map_size=map_size, head_hidden=8, image_size=32)
    student = DPIQAStudent(config).eval()
    features = torch.randn(2, student.map_head.in_channels, grid, grid, generator=torch.Generator().manual_seed(1))
    head = student.map_head
    expected = torch.nn.functional.interpolate(
        torch.relu(torch.nn.functional.conv_transpose2d(features, head.weight, head.bias, 2, 1, 1)),
        size=(map_size, map_size),
        mode="nearest",
    )
    with torch.no_grad():
        got = student.map_from_backbone(features)
    assert got.shape == (2, config.map_channels, map_size, map_size)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_nss_blur_is_brisques_7x7_gaussian_with_mirrored_edges() -> None:
    """The local mean of the statistics: a separable 7-tap Gaussian, sigma 7/6, edges mirrored without
    repeating the edge pixel (scipy's `mirror`), computed here by scipy."""
    import numpy as np
    from scipy import ndimage

    from dpiqa.models.student import _gaussian_blur, _gaussian_blur_shifted

    x = torch.rand(2, 3, 20, 17, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    taps = np.exp(-(np.arange(-3, 4) ** 2) / (2 * (7 / 6) ** 2))
    taps /= taps.sum()
    expected = ndimage.correlate1d(
        ndimage.correlate1d(x.numpy(), taps, axis=-1, mode="mirror"), taps, -2, mode="mirror"
    )
    np.testing.assert_allclose(_gaussian_blur(x).numpy(), expected, rtol=1e-12, atol=1e-12)
    # the form exports use (shifted slices: an ONNX conv's groups cannot follow the batch)
    np.testing.assert_allclose(_gaussian_blur_shifted(x).numpy(), expected, rtol=1e-12, atol=1e-12)


def test_head_pool_adds_a_linear_read_out_of_the_grids_mean_and_std() -> None:
    """`head_pool="meanstd"`: the score is the map MLP's plus a linear read-out of each feature's mean and
    standard deviation over the whole grid, standardised by running statistics when scoring; at its zero
    initialisation the scores are the plain head's."""
    config = StudentConfig(backbone="test_efficientnet", map_size=4, head_hidden=8, image_size=32)
    torch.manual_seed(0)
    plain = DPIQAStudent(config).eval()
    pooled = DPIQAStudent(dataclasses.replace(config, head_pool="meanstd")).eval()
    missing = pooled.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == [
        "pool_head.bias",
        "pool_head.weight",
        "pool_norm.running_mean",
        "pool_norm.running_var",
    ]
    channels = plain.map_head.in_channels
    features = torch.randn(3, channels, 6, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base, base_map = plain(features, from_backbone=True)
        same, same_map = pooled(features, from_backbone=True)
        torch.testing.assert_close(same, base)
        torch.testing.assert_close(same_map, base_map)
        weight = torch.randn(1, 2 * channels, generator=torch.Generator().manual_seed(3))
        pooled.pool_head.weight.copy_(weight)
        pooled.pool_head.bias.fill_(0.5)
        mean = torch.rand(2 * channels, generator=torch.Generator().manual_seed(4))
        var = torch.rand(2 * channels, generator=torch.Generator().manual_seed(5)) + 0.5
        pooled.pool_norm.running_mean.copy_(mean)
        pooled.pool_norm.running_var.copy_(var)
        got, _ = pooled(features, from_backbone=True)
    flat = features.flatten(2).double()
    stats = torch.cat([flat.mean(2), flat.std(2, correction=0)], 1)  # by hand over the 36 cells
    standard = (stats - mean.double()) / (var.double() + 1e-5).sqrt()
    expected = base.double() + (standard @ weight.double().t()).squeeze(1) + 0.5
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        from_images, _ = pooled(images)
        from_features, _ = pooled(pooled.backbone_features(images), from_backbone=True)
    torch.testing.assert_close(from_images, from_features)
    with pytest.raises(ValueError, match="head_pool"):
        DPIQAStudent(dataclasses.replace(config, head_pool="max"))


def test_head_pool_default_keeps_the_shipped_checkpoint_loading_identically() -> None:
    """The shipped demo student's config has no `head_pool`: it loads with the default, no pooled part."""
    demo = models.load_model("demo")
    assert demo.config.head_pool == "" and not hasattr(demo, "pool_head")
    assert sum(p.numel() for p in demo.parameters()) == 8_775_169


def test_head_pool_trains_on_batch_statistics_and_keeps_their_average() -> None:
    """While training, the pooled features are standardised by the batch's statistics and the running ones
    become the average over the batches seen (a batch of one image uses the running ones)."""
    config = StudentConfig(backbone="test_efficientnet", map_size=4, head_hidden=8, image_size=32, head_pool="meanstd")
    student = DPIQAStudent(config).train()
    channels = student.map_head.in_channels
    batches = [torch.randn(4, channels, 3, 3, generator=torch.Generator().manual_seed(s)) * 3 + s for s in (1, 2)]
    for f in batches:
        student(f, from_backbone=True)
    stats = [torch.cat([f.flatten(2).mean(2), f.flatten(2).std(2, correction=0)], 1) for f in batches]
    torch.testing.assert_close(student.pool_norm.running_mean, (stats[0].mean(0) + stats[1].mean(0)) / 2)
    before = student.pool_norm.running_mean.clone()
    student(batches[0][:1], from_backbone=True)  # one image: no batch statistics, nothing updated
    torch.testing.assert_close(student.pool_norm.running_mean, before)


def test_freeze_map_head_trains_the_pooled_read_out_alone() -> None:
    config = StudentConfig(
        backbone="test_efficientnet",
        map_size=4,
        head_hidden=8,
        image_size=32,
        head_pool="meanstd",
        freeze_map_head=True,
        freeze_backbone=True,
    )
    student = DPIQAStudent(config).train()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=1e-2)
    score, _ = student(torch.rand(4, 3, 32, 32))
    ((score - 1.0) ** 2).mean().backward()
    optimizer.step()
    after = student.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k]) and "pool_norm" not in k}
    assert moved == {"pool_head.weight", "pool_head.bias"}
