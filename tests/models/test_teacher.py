"""The teacher: spec sizes on the meta device, tiny-model behaviour, loading SD/CLIP weights, fast paths."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from expected import content_sha256
from tiny_clip import tiny_clip, tiny_clip_tokenizer

from dpiqa import models
from dpiqa.models import checkpoint
from dpiqa.models.attention import CachedContextAttnProcessor
from dpiqa.models.pretrained import sd_files
from dpiqa.models.prompts import DEFAULT_SET, quality_prompts
from dpiqa.models.run_options import RunOptions
from dpiqa.models.scorer import Scorer
from dpiqa.models.teacher import DPIQATeacher, TeacherConfig

# ---------------------------------------------------------------- full size, meta device (no memory)


@pytest.fixture(scope="module")
def meta_teacher() -> DPIQATeacher:
    return DPIQATeacher.from_config(TeacherConfig(), device="meta").eval()


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_full_size_parameter_counts_match_the_spec(meta_teacher: DPIQATeacher) -> None:
    t = meta_teacher
    assert numel(t.unet) == 859_520_964
    assert numel(t.image_adapter) == 77_369_280
    assert numel(t.text_adapter.mlp) == 1_181_184 and t.text_adapter.gamma.numel() == 768

    # Decoder, from the spec's layer list (weights + biases):
    levels = 9 * (1280 + 1280 + 640 + 320) * 512 + 4 * 512  # 4 per-level conv3x3 -> 512  = 16,222,208
    se = 512 * 32 + 32 + 32 * 512 + 512  # SE, reduction 16 (512 -> 32 -> 512)            = 33,312
    fused = 9 * 2048 * 512 + 512  # conv3x3 2048 -> 512                                     = 9,437,696
    to_map = (512 * 128 + 128) + (128 * 32 + 32) + (32 * 8 + 8)  # 1x1 convs 512->128->32->8 = 70,056
    decoder = levels + 4 * se + fused + se + to_map  # = 25,896,520
    head = (32768 * 512 + 512) + (512 * 512 + 512) + (512 + 1)  # MLP 32768 -> 512 -> 512 -> 1 = 17,040,897
    assert numel(t.decoder) == decoder == 25_896_520
    assert numel(t.mlp) == head == 17_040_897
    assert round((decoder + head) / 1e6, 1) == 42.9  # the spec's "decoder 42.9 M" includes the MLP

    vae_encoder = numel(t.vae)
    assert round(vae_encoder / 1e6, 1) == 34.2  # spec: "VAE encoder 34.2 M frozen"
    assert not any(p.requires_grad for p in t.vae.parameters())
    assert not hasattr(t.vae, "decoder")  # only the encoder (and quant_conv) is built

    # Trainable: everything but the VAE and the U-Net's unused noise-prediction output.
    noise_out = numel(t.unet.conv_norm_out) + numel(t.unet.conv_out)
    assert noise_out == 320 * 2 + (9 * 320 * 4 + 4)
    trainable = sum(p.numel() for p in t.parameters() if p.requires_grad)
    assert trainable == 859_520_964 - noise_out + 77_369_280 + 1_181_184 + 768 + decoder + head
    assert round(trainable / 1e6, 1) == 981.0  # spec: "trainable 981.0 M"
    assert round(numel(t) / 1e9, 2) == 1.02  # spec: "about 1.02 B parameters at inference"

    # The prompt embeddings are a buffer (inside the checkpoint), K x 768.
    assert t.prompt_embeddings.shape == (1485, 768)
    assert "prompt_embeddings" in t.state_dict()


def test_full_size_feature_and_map_shapes_at_512(meta_teacher: DPIQATeacher) -> None:
    x = torch.empty(2, 3, 512, 512, device="meta")
    with torch.no_grad():
        features = meta_teacher.unet_features(x)
        score, quality_map = meta_teacher(x)
    assert [tuple(f.shape[1:]) for f in features] == [(1280, 16, 16), (1280, 32, 32), (640, 64, 64), (320, 64, 64)]
    assert tuple(quality_map.shape) == (2, 8, 64, 64) and tuple(score.shape) == (2,)
    assert TeacherConfig().map_shape == (8, 64, 64)


def test_config_inconsistencies_are_named() -> None:
    config = TeacherConfig.tiny()
    config.prompt_dim = 32
    with pytest.raises(ValueError, match="cross_attention_dim 16 != prompt_dim 32"):
        DPIQATeacher.from_config(config, device="meta")
    with pytest.raises(ValueError, match="value_range"):
        DPIQATeacher.from_config(TeacherConfig(value_range=(0.0, 255.0)), device="meta")


# ---------------------------------------------------------------- tiny teacher on the CPU


@pytest.fixture
def tiny() -> DPIQATeacher:
    return models.build("dpiqa-teacher-tiny").eval()


def images(n: int = 3, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_tiny_has_four_feature_levels_and_the_config_map(tiny: DPIQATeacher) -> None:
    with torch.no_grad():
        features = tiny.unet_features(images(2))
        score, quality_map = tiny(images(2))
    assert [tuple(f.shape[1:]) for f in features] == [(32, 2, 2), (32, 4, 4), (16, 8, 8), (16, 8, 8)]
    assert tuple(quality_map.shape) == (2, *tiny.config.map_shape) == (2, 8, 16, 16)
    assert (quality_map >= 0).all()  # the map ends in a ReLU
    assert tuple(score.shape) == (2,) and torch.isfinite(score).all()


def test_latent_is_the_scaled_posterior_mean_and_inference_is_deterministic(tiny: DPIQATeacher) -> None:
    x = images(2)
    with torch.no_grad():
        expected = tiny.vae.encode(x).latent_dist.mean * 0.18215
        assert torch.equal(tiny.encode(x), expected)
        assert torch.equal(tiny(x)[0], tiny(x)[0])
        tiny.train()
        assert torch.equal(tiny.encode(x), expected)  # train_latent="mean": the mean in training too
        tiny.config.train_latent = "sample"
        assert not torch.allclose(tiny.encode(x), expected)
        tiny.eval()
        assert torch.equal(tiny.encode(x), expected)  # inference always uses the mean


def test_value_range_option_feeds_the_vae_as_given_and_the_adapter_in_unit_range() -> None:
    config = TeacherConfig.tiny()
    config.value_range = (-1.0, 1.0)
    model = DPIQATeacher.from_config(config).eval()
    seen = {}
    model.image_adapter.register_forward_pre_hook(lambda m, args: seen.__setitem__("adapter", args[0]))
    model.vae.encoder.register_forward_pre_hook(lambda m, args: seen.__setitem__("vae", args[0]))
    x01 = images(2)
    with torch.no_grad():
        model(x01 * 2 - 1)
    torch.testing.assert_close(seen["adapter"], x01)
    torch.testing.assert_close(seen["vae"], x01 * 2 - 1)
    assert model.config.preprocessing.value_range == (-1.0, 1.0)


def test_save_load_round_trip_is_bit_identical(tiny: DPIQATeacher, tmp_path: Path) -> None:
    x = images()
    with torch.inference_mode():
        before_score, before_map = tiny(x)
    card = tiny.save_pretrained(str(tmp_path / "ckpt"))
    loaded = models.load_model(str(tmp_path / "ckpt"))
    assert isinstance(loaded, DPIQATeacher)
    with torch.inference_mode():
        after_score, after_map = loaded(x)
    assert torch.equal(before_score, after_score) and torch.equal(before_map, after_map)

    weights = safetensors.torch.load_file(str(tmp_path / "ckpt" / checkpoint.WEIGHTS_NAME))
    assert torch.equal(weights["prompt_embeddings"], tiny.prompt_embeddings)  # inside the checkpoint
    assert not any(k.startswith("vae.decoder") for k in weights)
    assert not any("processor" in k or "_cached" in k for k in weights)
    assert card["sha256"] == content_sha256(tmp_path / "ckpt")
    assert card["dropped_reference_parameters"]["count"] == 13_336
    assert card["parameters"]["unet"] == numel(tiny.unet)
    assert sum(card["parameters"][p] for p in tiny.parts()) == card["parameters"]["total"]


def test_training_step_reaches_every_trainable_part_and_never_the_vae(tiny: DPIQATeacher) -> None:
    tiny.train()
    assert not tiny.vae.training and tiny.unet.training  # the VAE stays in eval mode
    vae_before = {k: v.clone() for k, v in tiny.vae.state_dict().items()}
    trainable_before = {n: p.detach().clone() for n, p in tiny.named_parameters() if p.requires_grad}
    optimizer = torch.optim.Adam([p for p in tiny.parameters() if p.requires_grad], lr=1e-3)
    score, quality_map = tiny(images(2))
    loss = torch.nn.functional.mse_loss(score, torch.tensor([0.3, 0.7]))
    loss.backward()

    no_grad = [n for n, p in tiny.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert no_grad == []
    assert all(p.grad is None for p in tiny.vae.parameters())
    assert all(p.grad is None for p in tiny.unet.conv_out.parameters())  # noise prediction: unused, frozen
    for part in ("unet", "image_adapter", "text_adapter", "decoder", "mlp"):
        assert any(p.grad is not None for p in getattr(tiny, part).parameters()), part

    optimizer.step()
    changed = {n for n, p in tiny.named_parameters() if p.requires_grad and not torch.equal(p, trainable_before[n])}
    assert changed == set(trainable_before)
    assert all(torch.equal(v, vae_before[k]) for k, v in tiny.vae.state_dict().items())


# ---------------------------------------------------------------- inference fast paths (via Scorer)


def uint8_images(n: int = 3, size: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def plain_scores(model: DPIQATeacher, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = model.config.preprocessing.to_tensor(torch.as_tensor(pixels))
    with torch.inference_mode():
        score, quality_map = model(x)
    return (score * model.config.mos_scale).numpy(), quality_map.numpy()


def cross_attention_layers(model: DPIQATeacher) -> list[Attention]:
    return [m for m in model.unet.modules() if isinstance(m, Attention) and m.is_cross_attention]


def test_cached_prompt_keys_values_give_the_plain_scores(tiny: DPIQATeacher) -> None:
    pixels = uint8_images()
    plain, plain_map = plain_scores(tiny, pixels)
    scorer = Scorer(copy.deepcopy(tiny), RunOptions(device="cpu", precision="fp32"))
    layers = cross_attention_layers(scorer.model)
    assert len(layers) == 10  # tiny U-Net: 3 down + 1 mid + 6 up cross-attention layers
    assert all(isinstance(a.processor, CachedContextAttnProcessor) for a in layers)

    calls = []
    for attn in layers:  # the fast path must not project the prompt context per batch
        attn.to_k.register_forward_hook(lambda *a: calls.append(1))
        attn.to_v.register_forward_hook(lambda *a: calls.append(1))
    out = scorer(pixels, return_map=True)
    assert calls == []
    # Tolerance: fp32, same math; only the reduction order inside the attention kernel may differ.
    np.testing.assert_allclose(out.scores, plain, rtol=1e-5, atol=1e-5 * np.abs(plain).max())
    np.testing.assert_allclose(out.maps.astype(np.float32), plain_map, rtol=1e-3, atol=1e-3)  # maps are float16


def test_cache_is_not_used_with_gradients_and_is_dropped_by_train(tiny: DPIQATeacher) -> None:
    pixels = uint8_images(2)
    plain, _ = plain_scores(tiny, pixels)
    tiny.prepare_for_inference()
    x = tiny.config.preprocessing.to_tensor(torch.as_tensor(pixels))
    score, _ = tiny(x)  # eval mode but gradients on: the live path, so the text adapter learns
    score.sum().backward()
    assert tiny.text_adapter.gamma.grad is not None and tiny.text_adapter.gamma.grad.any()
    np.testing.assert_allclose(score.detach().numpy() * 100, plain, rtol=1e-5)
    tiny.train()
    assert not any(isinstance(a.processor, CachedContextAttnProcessor) for a in cross_attention_layers(tiny))
    assert tiny._cached_context is None
    with pytest.raises(RuntimeError, match="eval"):
        tiny.prepare_for_inference()


def test_channels_last_gives_the_plain_scores(tiny: DPIQATeacher) -> None:
    pixels = uint8_images()
    plain, _ = plain_scores(tiny, pixels)
    scorer = Scorer(copy.deepcopy(tiny), RunOptions(device="cpu", precision="fp32", channels_last=True))
    assert scorer.model.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    # Tolerance: fp32; NHWC convolution kernels sum in another order.
    np.testing.assert_allclose(scorer(pixels).scores, plain, rtol=1e-5, atol=1e-5 * np.abs(plain).max())


def test_bf16_autocast_gives_the_plain_scores_within_bf16_precision(tiny: DPIQATeacher) -> None:
    pixels = uint8_images()
    plain, _ = plain_scores(tiny, pixels)
    out = Scorer(copy.deepcopy(tiny), RunOptions(device="cpu", precision="bf16"))(pixels)
    # Tolerance: bf16 keeps 8 significant bits (relative step 2^-8 = 0.4%); errors of ~40 layers add up,
    # so we allow 3% of the score's magnitude.
    np.testing.assert_allclose(out.scores, plain, rtol=0, atol=0.03 * np.abs(plain).max())
    assert not np.array_equal(out.scores, plain)  # it did run in bf16


# ---------------------------------------------------------------- loading SD and CLIP weights as a user does

PROMPTS = ["a photo of a cat", "a blurry photo of a dog, which is of bad quality", "ok"]


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny diffusers SD folder (vae/, unet/, plus an fp16 variant that must be skipped) and a tiny CLIP
    text model with projection + tokenizer, saved with save_pretrained as the real ones are."""
    root = tmp_path_factory.mktemp("tiny-sd")
    config = TeacherConfig.tiny()
    torch.manual_seed(1)
    vae = AutoencoderKL(**config.vae)
    unet = UNet2DConditionModel(**config.unet)
    vae.save_pretrained(root / "sd" / "vae")
    unet.save_pretrained(root / "sd" / "unet")
    copy.deepcopy(unet).half().save_pretrained(root / "sd" / "unet", variant="fp16")
    tokenizer = tiny_clip_tokenizer()
    clip = tiny_clip(config.prompt_dim, tokenizer)
    clip.save_pretrained(root / "clip")
    tokenizer.save_pretrained(root / "clip")
    return {
        "sd": root / "sd",
        "clip": root / "clip",
        "vae": vae,
        "unet": unet,
        "clip_model": clip,
        "tokenizer": tokenizer,
    }


def one_by_one(tiny_sd: dict, prompts: list[str]) -> torch.Tensor:
    """Each prompt's projected pooled feature, computed alone (no padding, no batching)."""
    with torch.no_grad():
        return torch.cat(
            [tiny_sd["clip_model"](**tiny_sd["tokenizer"]([p], return_tensors="pt")).text_embeds for p in prompts]
        )


def assert_loaded(teacher: DPIQATeacher, tiny_sd: dict) -> None:
    unet = tiny_sd["unet"].state_dict()
    assert all(torch.equal(v, unet[k]) for k, v in teacher.unet.state_dict().items())
    vae = tiny_sd["vae"].state_dict()
    assert all(torch.equal(v, vae[k]) for k, v in teacher.vae.state_dict().items())


def test_from_stable_diffusion_local_folders(tiny_sd: dict, tmp_path: Path) -> None:
    teacher = DPIQATeacher.from_stable_diffusion(
        sd=str(tiny_sd["sd"]),
        clip=str(tiny_sd["clip"]),
        prompts=PROMPTS,
        config=TeacherConfig.tiny(),
        batch_size=2,
    ).eval()
    assert_loaded(teacher, tiny_sd)
    torch.testing.assert_close(teacher.prompt_embeddings, one_by_one(tiny_sd, PROMPTS), rtol=1e-5, atol=1e-6)
    assert teacher.config.num_prompts == 3 and teacher.config.prompt_set.startswith("custom-3-")
    assert teacher.config.text_encoder == str(tiny_sd["clip"])
    assert teacher.config.unet["block_out_channels"] == [16, 16, 32, 32]

    # The prompt embeddings travel in the checkpoint; no CLIP is needed to load it.
    x = images(2)
    with torch.inference_mode():
        before = teacher(x)[0]
    card = teacher.save_pretrained(str(tmp_path / "ckpt"))
    assert card["prompts"]["text_encoder"] == str(tiny_sd["clip"])
    loaded = DPIQATeacher.from_pretrained(str(tmp_path / "ckpt"))
    with torch.inference_mode():
        assert torch.equal(loaded(x)[0], before)
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["num_prompts"] == 3


def test_from_stable_diffusion_fsspec_urls_with_the_default_prompts(tiny_sd: dict, s3: tuple) -> None:
    import s3fs

    bucket, options = s3
    fs = s3fs.S3FileSystem(**options)
    fs.put(str(tiny_sd["sd"]), f"{bucket}/models/sd", recursive=True)
    fs.put(str(tiny_sd["clip"]), f"{bucket}/models/clip", recursive=True)

    teacher = DPIQATeacher.from_stable_diffusion(
        sd=f"s3://{bucket}/models/sd",
        clip=f"s3://{bucket}/models/clip",
        config=TeacherConfig.tiny(),
        storage_options=options,
    ).eval()
    assert_loaded(teacher, tiny_sd)
    assert teacher.config.num_prompts == 1485 and teacher.config.prompt_set == DEFAULT_SET
    some = [0, 700, 1484]
    expected = one_by_one(tiny_sd, [quality_prompts()[i] for i in some])
    torch.testing.assert_close(teacher.prompt_embeddings[some], expected, rtol=1e-5, atol=1e-6)

    mirrored = {p.relative_to(p.parents[1]).as_posix() for p in (checkpoint.cache_dir() / "mirrors").glob("*/unet/*")}
    assert mirrored == {"unet/config.json", "unet/diffusion_pytorch_model.safetensors"}  # no fp16 variant
    with torch.inference_mode():
        score, quality_map = teacher(images(2))
    assert torch.isfinite(score).all() and tuple(quality_map.shape) == (2, 8, 16, 16)


SD_FILES = [
    "model_index.json",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.bin",
    "unet/config.json",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
    "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
    "unet/diffusion_pytorch_model.safetensors.index.json",
    "unet/diffusion_pytorch_model.non_ema.safetensors",
    "unet/diffusion_pytorch_model.bin",
    "text_encoder/model.safetensors",
]


def test_only_the_needed_sd_files_are_fetched() -> None:
    assert sd_files(SD_FILES, None, "sd") == {
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",  # safetensors preferred over .bin
        "unet/config.json",
        "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.json",
    }
    with pytest.raises(ValueError, match=r"sd: vae/ has no weights \(diffusion_pytorch_model.fp16.safetensors or "):
        sd_files(SD_FILES, "fp16", "sd")  # the vae has no fp16 variant: said, not guessed
    old = ["vae/config.json", "vae/diffusion_pytorch_model.bin", "unet/config.json", "unet/diffusion_pytorch_model.bin"]
    assert sd_files(old, None, "sd") == set(old)  # an older snapshot with .bin weights only
    with pytest.raises(ValueError, match="sd: not a Stable Diffusion folder: unet/config.json is missing"):
        sd_files(old[:2], None, "sd")


def test_bin_only_folders_load_from_a_bucket_through_the_training_path(
    tiny_sd: dict, s3: tuple, tmp_path: Path
) -> None:
    """Older snapshots hold `.bin` weights only (read with weights_only), and storage options reach the SD and
    CLIP loading of a training worker (`build_model`, what every Ray Train worker calls)."""
    import s3fs

    from dpiqa.engine.training.model import ModelSpec, build_model, check_sources

    bucket, options = s3
    fs = s3fs.S3FileSystem(**options)
    tiny_sd["vae"].save_pretrained(tmp_path / "sd" / "vae", safe_serialization=False)
    tiny_sd["unet"].save_pretrained(tmp_path / "sd" / "unet", safe_serialization=False)
    tiny_sd["clip_model"].save_pretrained(tmp_path / "clip", safe_serialization=False)
    tiny_sd["tokenizer"].save_pretrained(tmp_path / "clip")
    assert not list((tmp_path / "sd").glob("*/*.safetensors")) and list((tmp_path / "sd").glob("unet/*.bin"))
    fs.put(str(tmp_path / "sd"), f"{bucket}/old/sd", recursive=True)
    fs.put(str(tmp_path / "clip"), f"{bucket}/old/clip", recursive=True)
    spec = ModelSpec(
        kind="teacher",
        config="dpiqa-teacher-tiny",
        sd=f"s3://{bucket}/old/sd",
        clip=f"s3://{bucket}/old/clip",
        prompt_set="empty-1",
    )
    assert check_sources(spec, 5.0, options).startswith(f"Stable Diffusion s3://{bucket}/old/sd")
    teacher = build_model(spec, 5.0, storage_options=options)
    assert_loaded(teacher, tiny_sd)
    with pytest.raises(ValueError, match="unet/config.json is missing"):
        fs.rm(f"{bucket}/old/sd/unet/config.json")
        check_sources(spec, 5.0, options)
    with pytest.raises(ValueError, match="train-teacher needs the diffusion prior: --sd .*--random-prior"):
        check_sources(ModelSpec(kind="teacher", config="dpiqa-teacher-tiny"), 5.0)
