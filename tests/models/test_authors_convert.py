"""`dpiqa convert`: the DP-IQA authors' released teacher and student layouts (built here from the spec's key
list, with random weights) become our checkpoints computing the same function as a forward pass written here
from the spec's description; files that are not the released layout are refused with one line."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import corpus
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import torchvision
from clirun import dpiqa
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.adapter import FullAdapter
from tiny_clip import tiny_clip, tiny_clip_tokenizer

from dpiqa import models
from dpiqa.errors import UsageError
from dpiqa.models import authors
from dpiqa.models.prompts import DEFAULT_SET, prompt_texts
from dpiqa.models.student_config import StudentConfig
from dpiqa.models.teacher import DPIQATeacher, TeacherConfig

# ---------------------------------------------------------------- the authors' layouts, from the spec


def fill(key: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Random weights of a plausible scale: BN statistics positive, weights ~ 1/sqrt(fan-in)."""
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    if key.endswith("running_var"):
        return torch.rand(shape, generator=generator) + 0.5
    if len(shape) <= 1:
        base = 1.0 if key.endswith(".weight") and "running" not in key else 0.0
        return base + 0.1 * torch.randn(shape, generator=generator)
    fan_in = shape[0] * math.prod(shape[2:]) if "conv_transpose" in key else math.prod(shape[1:])
    return torch.randn(shape, generator=generator) / math.sqrt(fan_in)


def student_layout(backbone: str, map_channels: int, map_size: int, hidden: int, device: str) -> dict:
    """The authors' student keys and shapes: torchvision features under `base_model.features`, a transposed
    conv (in, 8, 3, 3), fc1-fc3."""
    with torch.device("meta"):
        features = torchvision.models.get_model(backbone).features
    shapes = {f"base_model.features.{k}": tuple(v.shape) for k, v in features.state_dict().items()}
    channels = [m for m in features.modules() if isinstance(m, torch.nn.Conv2d)][-1].out_channels
    shapes |= {
        "conv_transpose.weight": (channels, map_channels, 3, 3),
        "conv_transpose.bias": (map_channels,),
        "fc1.weight": (hidden, map_channels * map_size**2),
        "fc1.bias": (hidden,),
        "fc2.weight": (hidden, hidden),
        "fc2.bias": (hidden,),
        "fc3.weight": (1, hidden),
        "fc3.bias": (1,),
    }
    if device == "meta":
        return {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    g = torch.Generator().manual_seed(0)
    return {k: fill(k, s, g) for k, s in shapes.items()}


def qfd_shapes(config: TeacherConfig) -> dict[str, tuple[int, ...]]:
    """The spec's `QFD.*` keys: conv1 reads the shallowest up block (u3) ... conv4 the deepest (u0); SE layers are
    bias-free Linear layers; the unused bnc1 and 24-way classifier are saved too."""
    c, r = config.decoder_channels, config.decoder_channels // config.se_reduction
    u = config.feature_channels  # u0..u3, deepest first
    shapes: dict[str, tuple[int, ...]] = {}
    for n, width in zip((1, 2, 3, 4), (u[3], u[2], u[1], u[0]), strict=True):
        shapes |= {f"QFD.conv{n}.weight": (c, width, 3, 3), f"QFD.conv{n}.bias": (c,)}
    for se in ("se1", "se2", "se3", "se4", "se_fuse"):
        shapes |= {f"QFD.{se}.fc.0.weight": (r, c), f"QFD.{se}.fc.2.weight": (c, r)}
    h1, h2 = config.map_hidden
    m, s, hidden = config.map_channels, config.map_size, config.head_hidden
    shapes |= {
        "QFD.fuse_conv.weight": (c, 4 * c, 3, 3),
        "QFD.fuse_conv.bias": (c,),
        "QFD.conv_score1.weight": (h1, c, 1, 1),
        "QFD.conv_score1.bias": (h1,),
        "QFD.conv_score2.weight": (h2, h1, 1, 1),
        "QFD.conv_score2.bias": (h2,),
        "QFD.conv_score3.weight": (m, h2, 1, 1),
        "QFD.conv_score3.bias": (m,),
        "QFD.bnc1.weight": (c,),
        "QFD.bnc1.bias": (c,),
        "QFD.bnc1.running_mean": (c,),
        "QFD.bnc1.running_var": (c,),
        "QFD.bnc1.num_batches_tracked": (),
        "QFD.classifier_dist.weight": (24, c),
        "QFD.classifier_dist.bias": (24,),
        "QFD.fc1.weight": (hidden, m * s * s),
        "QFD.fc1.bias": (hidden,),
        "QFD.fc2.weight": (hidden, hidden),
        "QFD.fc2.bias": (hidden,),
        "QFD.fc3.weight": (1, hidden),
        "QFD.fc3.bias": (1,),
    }
    return shapes


def teacher_layout(config: TeacherConfig, device: str, text_encoder: bool = False, seed: int = 0) -> dict:
    """The authors' teacher state dict: the whole SD VAE (decoder too), the U-Net, `img_adapter` (diffusers'
    FullAdapter), `text_adapter.fc.{0,2}`, a top-level `gamma`, `QFD.*`; optionally SD's CLIP `text_encoder`."""
    torch.manual_seed(seed)
    with torch.device(device):
        parts = {
            "vae": AutoencoderKL(**config.vae),
            "unet": UNet2DConditionModel(**config.unet),
            "img_adapter": FullAdapter(
                in_channels=3,
                channels=list(config.adapter_channels),
                num_res_blocks=config.adapter_res_blocks,
                downscale_factor=config.adapter_downscale,
            ),
        }
        if text_encoder:
            from transformers import CLIPTextConfig, CLIPTextModel

            parts["text_encoder"] = CLIPTextModel(
                CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
            )
    state = {f"{p}.{k}": v for p, module in parts.items() for k, v in module.state_dict().items()}
    d = config.prompt_dim
    shapes = {
        "gamma": (d,),
        "text_adapter.fc.0.weight": (d, d),
        "text_adapter.fc.0.bias": (d,),
        "text_adapter.fc.2.weight": (d, d),
        "text_adapter.fc.2.bias": (d,),
        **qfd_shapes(config),
    }
    g = torch.Generator().manual_seed(seed)
    for key, shape in shapes.items():
        state[key] = torch.empty(shape, device="meta") if device == "meta" else fill(key, shape, g)
    return state


def elements(state: dict) -> int:
    return sum(v.numel() for v in state.values())


# ---------------------------------------------------------------- the forward passes, written from the spec


def reference_student(state: dict, x: torch.Tensor, backbone: str, map_size: int) -> tuple[torch.Tensor, ...]:
    """Features -> transposed conv (stride 2, padding 1, output padding 1) -> ReLU -> nearest to the map size
    -> fc1, ReLU, fc2, ReLU, fc3."""
    with torch.device("meta"):
        features = torchvision.models.get_model(backbone).features
    prefix = "base_model.features."
    features.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, assign=True)
    with torch.inference_mode():
        f = features.eval()(x)
        m = F.relu(
            F.conv_transpose2d(
                f, state["conv_transpose.weight"], state["conv_transpose.bias"], stride=2, padding=1, output_padding=1
            )
        )
        m = F.interpolate(m, size=(map_size, map_size), mode="nearest")
        h = F.relu(F.linear(m.flatten(1), state["fc1.weight"], state["fc1.bias"]))
        h = F.relu(F.linear(h, state["fc2.weight"], state["fc2.bias"]))
        return F.linear(h, state["fc3.weight"], state["fc3.bias"])[:, 0], m


def reference_qfd(state: dict, u: list[torch.Tensor], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder and head: each level bicubic to the map size, conv3x3 + bias-free SE (mean, fc, ReLU, fc,
    sigmoid, multiply); fuse_conv over [conv1, conv2, conv3, conv4] + SE; conv_score1-3 each with a ReLU; flatten,
    fc1, ReLU, fc2, ReLU, fc3. `u`: the up-block outputs u0..u3 (deepest first)."""

    def se(x: torch.Tensor, name: str) -> torch.Tensor:
        s = F.relu(F.linear(x.mean((2, 3)), state[f"QFD.{name}.fc.0.weight"]))
        return x * torch.sigmoid(F.linear(s, state[f"QFD.{name}.fc.2.weight"]))[:, :, None, None]

    def conv(x: torch.Tensor, name: str, padding: int = 0) -> torch.Tensor:
        return F.conv2d(x, state[f"QFD.{name}.weight"], state[f"QFD.{name}.bias"], padding=padding)

    levels = []
    for n, f in ((1, u[3]), (2, u[2]), (3, u[1]), (4, u[0])):
        f = F.interpolate(f, size=(size, size), mode="bicubic", align_corners=False)
        levels.append(se(conv(f, f"conv{n}", 1), f"se{n}"))
    fused = se(conv(torch.cat(levels, 1), "fuse_conv", 1), "se_fuse")
    m = F.relu(conv(F.relu(conv(F.relu(conv(fused, "conv_score1")), "conv_score2")), "conv_score3"))
    h = F.relu(F.linear(m.flatten(1), state["QFD.fc1.weight"], state["QFD.fc1.bias"]))
    h = F.relu(F.linear(h, state["QFD.fc2.weight"], state["QFD.fc2.bias"]))
    return F.linear(h, state["QFD.fc3.weight"], state["QFD.fc3.bias"])[:, 0], m


def reference_teacher(state: dict, config: TeacherConfig, prompts: torch.Tensor, x: torch.Tensor) -> tuple:
    """The whole teacher: latent = VAE posterior mean x 0.18215 of the [0, 1] image; the image adapter on the same
    image, its outputs as the U-Net's intra-block residuals; context E + gamma * MLP(E); U-Net at t = 1; the four
    up-block outputs -> `reference_qfd`."""

    def part(module: torch.nn.Module, prefix: str) -> torch.nn.Module:
        module.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        return module.eval()

    vae = part(AutoencoderKL(**config.vae), "vae.")
    unet = part(UNet2DConditionModel(**config.unet), "unet.")
    adapter = part(
        FullAdapter(3, list(config.adapter_channels), config.adapter_res_blocks, config.adapter_downscale),
        "img_adapter.",
    )
    hidden = F.gelu(F.linear(prompts, state["text_adapter.fc.0.weight"], state["text_adapter.fc.0.bias"]))
    context = prompts + state["gamma"] * F.linear(
        hidden, state["text_adapter.fc.2.weight"], state["text_adapter.fc.2.bias"]
    )
    up: list[torch.Tensor] = []
    for block in unet.up_blocks:
        block.register_forward_hook(lambda m, a, out: up.append(out))
    with torch.inference_mode():
        latent = vae.encode(x).latent_dist.mean * 0.18215
        unet(
            latent,
            1,
            encoder_hidden_states=context.expand(len(x), -1, -1),
            down_intrablock_additional_residuals=list(adapter(x)),
        )
        return reference_qfd(state, up, config.map_size)


# ---------------------------------------------------------------- the student at full size

FULL = "torchvision/efficientnet_b7"


@pytest.fixture(scope="module")
def full_student(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    state = student_layout("efficientnet_b7", 8, 64, 512, "cpu")
    path = tmp_path_factory.mktemp("authors") / "koniq_student_model_plcc_best.pth"
    torch.save(state, path)
    return state, path


def test_the_spec_student_layout_has_the_released_key_count_and_sizes() -> None:
    state = student_layout("efficientnet_b7", 8, 64, 512, "meta")
    parameters = sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k)
    assert (len(state), parameters, elements(state)) == (1206, 81_012_185, 81_323_068)  # the spec's totals


def test_full_size_student_converts_through_the_cli_and_computes_the_authors_function(
    full_student: tuple[dict, Path], tmp_path: Path
) -> None:
    state, path = full_student
    out = dpiqa("convert", str(path), "--output", str(tmp_path / "ckpt"))
    assert out.returncode == 0, out.stderr
    assert "1206 keys mapped" in out.stdout and "CC BY-NC-SA" in out.stdout
    card = json.loads((tmp_path / "ckpt" / "card.json").read_text())
    assert card["source"]["file"] == path.name
    assert card["source"]["sha256"] == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert card["trained_on"]["dataset"] == "koniq" and card["trained_on"]["selected_by"] == "best test-split PLCC"
    assert card["licence"]["weights"] == "CC BY-NC-SA" and "non-commercial" in card["licence"]["summary"]
    assert card["conversion"]["mapped"] == 1206 and card["conversion"]["dropped"] == {}
    assert card["preprocessing"] == {
        "size": [512, 512],
        "interpolation": "bilinear",
        "value_range": [0.0, 1.0],
        "statistics": [],
    }
    assert card["mos_scale"] == 100.0

    model = models.load_model(str(tmp_path / "ckpt"))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))  # small input: the same function
    with torch.inference_mode():
        score, quality_map = model(x)
    expected_score, expected_map = reference_student(state, x, "efficientnet_b7", 64)
    assert quality_map.shape == (2, 8, 64, 64) and expected_map.abs().max() > 0
    torch.testing.assert_close(quality_map, expected_map, atol=1e-5, rtol=0)
    torch.testing.assert_close(score, expected_score, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- refusals through the CLI, one line each


def one_line(out) -> str:  # clirun.Result
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_a_pth_holding_other_objects_is_refused_with_one_line(tmp_path: Path) -> None:
    module = tmp_path / "koniq_student_model_plcc_best.pth"
    torch.save(torch.nn.Linear(2, 2), module)  # a pickled module: not loadable with weights_only
    out = dpiqa("convert", str(module), "--output", str(tmp_path / "a"))
    assert out.returncode == 4
    assert "holds objects other than tensors (a torch.nn.modules.linear.Linear), refused" in one_line(out)

    nested = tmp_path / "clive_student_model_srcc_best.pth"
    torch.save({"state_dict": {"fc3.bias": torch.zeros(1)}, "epoch": 3}, nested)
    out = dpiqa("convert", str(nested), "--output", str(tmp_path / "b"))
    assert out.returncode == 4
    assert "entry 'state_dict' is a dict, not a tensor" in one_line(out)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_unexpected_a_missing_key_or_a_shape_stops_naming_it(
    full_student: tuple[dict, Path], tmp_path: Path
) -> None:
    state, _ = full_student
    first = "base_model.features.0.0.weight"
    cases = {  # each key is checked as it is read: only the missing key needs the whole file
        "unexpected key extra.weight": {first: state[first], "extra.weight": torch.zeros(3)},
        "key conv_transpose.bias has shape (9,), expected (8,)": {
            first: state[first],
            "conv_transpose.bias": torch.zeros(9),
        },
        "missing key fc3.bias": {k: v for k, v in state.items() if k != "fc3.bias"},
    }
    for i, (message, bad) in enumerate(cases.items()):
        path = tmp_path / f"spaq_student_model_plcc_best.{i}.pth"
        torch.save(bad, path)
        out = dpiqa("convert", str(path), "--output", str(tmp_path / f"out{i}"))
        assert out.returncode == 4, out.stderr
        assert message in one_line(out)
        assert not (tmp_path / f"out{i}").exists()
        path.unlink()


def test_options_that_cannot_work_are_usage_errors(tmp_path: Path) -> None:
    unnamed = tmp_path / "mine.pth"
    torch.save({"fc3.bias": torch.zeros(1)}, unnamed)
    out = dpiqa("convert", str(unnamed), "--output", str(tmp_path / "a"))
    assert out.returncode == 2 and "say which dataset it was trained on with --dataset" in one_line(out)
    named = tmp_path / "koniq_model_plcc_best.pth"
    torch.save({"unet.conv_in.weight": torch.zeros(1), "QFD.fc3.bias": torch.zeros(1)}, named)
    out = dpiqa("convert", str(named), "--output", str(tmp_path / "b"), "--dataset", "spaq")
    assert out.returncode == 2 and "trained on koniq, not spaq" in one_line(out)


# ---------------------------------------------------------------- the teacher at full size, on the meta device


def test_full_size_teacher_keys_and_shapes_all_map_or_are_knowingly_dropped() -> None:
    state = teacher_layout(TeacherConfig(), "meta")
    assert (len(state), elements(state)) == (1016, 1_064_675_117)  # the spec's totals
    ours = DPIQATeacher.from_config(authors.teacher_config(), device="meta")
    expected = {k: v.shape for k, v in ours.state_dict().items() if k != "prompt_embeddings"}

    mapping = authors.map_teacher(state, ours, "koniq_model_plcc_best.pth")
    assert {k: v.shape for k, v in mapping.state.items()} == expected
    dropped = {why.split(":")[0]: len(keys) for why, keys in mapping.dropped.items()}
    assert dropped == {
        "the VAE's decoder": 140,  # vae.decoder.* 138 + vae.post_quant_conv.* 2
        "a BatchNorm the authors' decoder builds and never calls": 5,
        "a 24-way classifier the authors' decoder builds and never calls": 2,
    }
    assert len(mapping.state) + 147 == 1016
    unused = 49_490_179 + 20 + 13_336 + 2 * 512 + 1  # VAE decoder, bnc1 + classifier, bnc1's buffers
    assert elements(mapping.state) == 1_064_675_117 - unused

    # the variant with Stable Diffusion's unused CLIP text encoder: 196 more keys, dropped
    with_text = teacher_layout(TeacherConfig(), "meta", text_encoder=True)
    extra = {k: v for k, v in with_text.items() if k.startswith("text_encoder.")}
    assert (len(with_text), len(extra), elements(extra)) == (1212, 196, 123_060_480)
    mapping = authors.map_teacher(with_text, ours, "koniq_model_plcc_best.pth")
    assert len(mapping.state) == len(expected)
    assert sum(len(keys) for keys in mapping.dropped.values()) == 147 + 196

    # the VAE's attention keys under diffusers' old names are renamed, not refused
    old = {
        k.replace(".to_q.", ".query.").replace(".to_out.0.", ".proj_attn.") if k.startswith("vae.") else k: v
        for k, v in state.items()
    }
    assert sum(".query." in k or ".proj_attn." in k for k in old) == 8  # the encoder's and decoder's mid block
    assert authors.map_teacher(old, ours, "x.pth").state.keys() == mapping.state.keys()


# ---------------------------------------------------------------- the teacher at tiny size, numbers


@pytest.fixture(scope="module")
def tiny_clip_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, object]:
    root = tmp_path_factory.mktemp("clip")
    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(3)
    clip = tiny_clip(TeacherConfig.tiny().prompt_dim, tokenizer)
    clip.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root, clip, tokenizer


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory, tiny_clip_folder: tuple) -> tuple[dict, Path]:
    state = teacher_layout(TeacherConfig.tiny(), "cpu", seed=5)
    root = tmp_path_factory.mktemp("tiny-teacher")
    torch.save(state, root / "livefb_model_srcc_best.pth")
    authors.convert(
        str(root / "livefb_model_srcc_best.pth"),
        str(root / "ckpt"),
        clip=str(tiny_clip_folder[0]),
        config=TeacherConfig.tiny(),
    )
    return state, root


def test_tiny_teacher_decoder_head_and_whole_forward_equal_the_spec(
    tiny_teacher: tuple, tiny_clip_folder: tuple
) -> None:
    state, root = tiny_teacher
    config = TeacherConfig.tiny()
    assert config.feature_channels[0] == config.feature_channels[1]  # conv3 and conv4: one shape, mapped by name
    model = models.load_model(str(root / "ckpt"))
    assert model.config.se_bias is False and model.config.num_prompts == 1485

    # the decoder and head on the same up-block features (u0..u3 at 64 px: 32@2, 32@4, 16@8, 16@8)
    g = torch.Generator().manual_seed(7)
    u = [torch.randn(2, c, s, s, generator=g) for c, s in zip(config.feature_channels, (2, 4, 8, 8), strict=True)]
    with torch.inference_mode():
        quality_map = model.decoder(u)
        score = model.mlp(quality_map)
    expected_score, expected_map = reference_qfd(state, u, config.map_size)
    torch.testing.assert_close(quality_map, expected_map, atol=1e-5, rtol=0)
    torch.testing.assert_close(score, expected_score, atol=1e-5, rtol=0)

    # the prompt embeddings: CLIP's projected end-of-text feature of the 1,485 prompts, in their order
    _, clip, tokenizer = tiny_clip_folder
    texts = prompt_texts(DEFAULT_SET)
    with torch.no_grad():
        rows = [
            clip(**tokenizer([texts[i]], return_tensors="pt", truncation=True)).text_embeds[0] for i in (0, 700, 1484)
        ]
    torch.testing.assert_close(model.prompt_embeddings[[0, 700, 1484]], torch.stack(rows), atol=1e-5, rtol=1e-5)

    # the whole teacher on images in [0, 1]
    x = torch.rand(2, 3, 64, 64, generator=g)
    with torch.inference_mode():
        score, quality_map = model(x)
    expected_score, expected_map = reference_teacher(state, config, model.prompt_embeddings, x)
    torch.testing.assert_close(quality_map, expected_map, atol=1e-5, rtol=0)
    torch.testing.assert_close(score, expected_score, atol=1e-5, rtol=0)
    card = json.loads((root / "ckpt" / "card.json").read_text())
    assert card["trained_on"]["dataset"] == "livefb" and card["licence"]["weights"] == "CC BY-NC-SA"
    assert "se_bias false" in card["conversion"]["function"] and "deterministic" in card["latent"]


def test_the_sampled_latent_is_the_authors_option(tiny_teacher: tuple, tiny_clip_folder: tuple, tmp_path: Path) -> None:
    state, root = tiny_teacher
    authors.convert(
        str(root / "livefb_model_srcc_best.pth"),
        str(tmp_path / "sampled"),
        clip=str(tiny_clip_folder[0]),
        config=TeacherConfig.tiny(),
        inference_latent="sample",
    )
    sampled = models.load_model(str(tmp_path / "sampled"))
    mean = models.load_model(str(root / "ckpt"))
    assert sampled.config.inference_latent == "sample" and mean.config.inference_latent == "mean"
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        assert torch.equal(mean(x)[0], mean(x)[0])
        first, second = sampled(x)[0], sampled(x)[0]
        assert not torch.equal(first, second)  # a fresh draw each pass
        posterior = sampled.vae.encode(x).latent_dist
        torch.manual_seed(11)
        latent = sampled.encode(x)
        torch.manual_seed(11)
        assert torch.equal(latent, posterior.sample() * 0.18215)  # the authors' draw, scaled


def test_a_teacher_needs_clip_and_sd_only_where_the_vae_is_missing(
    tiny_teacher: tuple, tiny_clip_folder: tuple, tmp_path: Path
) -> None:
    state, root = tiny_teacher
    out = dpiqa("convert", str(root / "livefb_model_srcc_best.pth"), "--output", str(tmp_path / "a"))
    assert out.returncode == 2 and "pass --clip" in one_line(out)
    without_vae = tmp_path / "livefb_model_plcc_best.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("vae.")}, without_vae)
    with pytest.raises(authors.AuthorsCheckpointError, match=r"missing key vae\.encoder\.conv_in\.weight .*--sd"):
        authors.convert(str(without_vae), str(tmp_path / "b"), clip="unused", config=TeacherConfig.tiny())

    # --sd fills the frozen VAE encoder from a Stable Diffusion folder, and only where the file lacks it
    vae = AutoencoderKL(**TeacherConfig.tiny().vae)
    vae.load_state_dict({k[len("vae.") :]: v for k, v in state.items() if k.startswith("vae.")})
    vae.save_pretrained(tmp_path / "sd" / "vae")
    clip = str(tiny_clip_folder[0])
    authors.convert(
        str(without_vae), str(tmp_path / "c"), clip=clip, sd=str(tmp_path / "sd"), config=TeacherConfig.tiny()
    )
    converted = models.load_model(str(tmp_path / "c"))
    assert all(torch.equal(v, state[f"vae.{k}"]) for k, v in converted.vae.state_dict().items())
    card = json.loads((tmp_path / "c" / "card.json").read_text())
    assert card["conversion"]["vae_encoder_from"] == str(tmp_path / "sd")
    with pytest.raises(UsageError, match="holds the VAE encoder; --sd is only for a file without it"):
        authors.convert(
            str(root / "livefb_model_srcc_best.pth"),
            str(tmp_path / "d"),
            clip=clip,
            sd=str(tmp_path / "sd"),
            config=TeacherConfig.tiny(),
        )


# ---------------------------------------------------------------- a converted student scores shards end to end

SMALL = StudentConfig(backbone="torchvision/mobilenet_v3_small", map_size=16, head_hidden=32, image_size=64)


def test_dpiqa_score_with_a_converted_student_runs_end_to_end(tmp_path: Path) -> None:
    state = student_layout("mobilenet_v3_small", 8, 16, 32, "cpu")
    torch.save(state, tmp_path / "clive_student_model_plcc_best.pth")
    card = authors.convert(str(tmp_path / "clive_student_model_plcc_best.pth"), str(tmp_path / "ckpt"), config=SMALL)
    assert card["trained_on"]["dataset"] == "clive"
    (tmp_path / "in").mkdir()
    corpus.write_corpus(tmp_path / "in", shards=2, per_shard=3)
    out = dpiqa(
        "score",
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "scores"),
        "--model",
        str(tmp_path / "ckpt"),
        "--executor",
        "local",
    )
    assert out.returncode == 0, out.stderr
    assert "6 ok, 0 errors" in out.stdout

    from dpiqa.engine.stages.decode import decode_image

    rows = pq.read_table(tmp_path / "scores" / "scores" / "00001.parquet").to_pylist()
    images = [corpus.jpeg(1000 + i, size=(40 + i % 7, 36 + i % 5)) for i in range(3)]
    pixels = np.stack([decode_image(b, SMALL.preprocessing).pixels for b in images])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    expected, _ = reference_student(state, x, "mobilenet_v3_small", 16)
    assert [r["status"] for r in rows] == ["ok"] * 3
    np.testing.assert_allclose([r["score"] for r in rows], (expected * 100).numpy(), atol=1e-3, rtol=0)


# ---------------------------------------------------------------- the ONNX student


def authors_onnx(path: Path, seed: int = 0) -> tuple[np.ndarray, ...]:
    """A stand-in for their `student_model.onnx` with its contract (input `input` float32 (1, 3, 512, 512) in
    [0, 1]; outputs the score (1, 1) then the map (1, 8, 64, 64), names of the exporter's choosing): average
    pool by 8, a 1x1 conv to 8 channels, ReLU = map; its channel means -> a linear layer = score."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(size=(8, 3, 1, 1)).astype(np.float32)
    b = rng.normal(size=8).astype(np.float32)
    fc = rng.normal(size=(8, 1)).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", ["input"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Conv", ["pooled", "w", "b"], ["conv"]),
        helper.make_node("Relu", ["conv"], ["onnx::Relu_17"]),
        helper.make_node("ReduceMean", ["onnx::Relu_17"], ["mean"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["mean", "fc"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "student",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 512, 512])],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1]),
            helper.make_tensor_value_info("onnx::Relu_17", TensorProto.FLOAT, [1, 8, 64, 64]),
        ],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"), numpy_helper.from_array(fc, "fc")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return w, b, fc


def test_the_onnx_student_runs_inside_our_export_folder(tmp_path: Path) -> None:
    w, b, fc = authors_onnx(tmp_path / "student_model.onnx")
    out = dpiqa("convert", str(tmp_path / "student_model.onnx"), "--output", str(tmp_path / "ckpt"))
    assert out.returncode == 0, out.stderr
    card = json.loads((tmp_path / "ckpt" / "card.json").read_text())
    assert card["format"] == "onnx" and card["trained_on"]["dataset"] == "koniq"
    assert card["conversion"]["their_outputs"] == ["output", "onnx::Relu_17"]
    assert models.runtime_of(str(tmp_path / "ckpt")) == "onnx"

    scorer = models.load_scorer(str(tmp_path / "ckpt"))
    pixels = np.random.default_rng(2).integers(0, 256, (3, 512, 512, 3), dtype=np.uint8)  # batch 3 > their 1
    result = scorer(pixels, return_map=True)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255  # torchvision's ToTensor
    quality_map = F.relu(F.conv2d(F.avg_pool2d(x, 8), torch.from_numpy(w), torch.from_numpy(b)))
    score = quality_map.mean((2, 3)) @ torch.from_numpy(fc)
    np.testing.assert_allclose(result.scores, score[:, 0].numpy() * 100, atol=1e-4, rtol=1e-6)
    np.testing.assert_allclose(result.maps.astype(np.float32), quality_map.numpy(), atol=2e-3, rtol=1e-3)
