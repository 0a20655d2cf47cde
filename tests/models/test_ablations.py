"""The teacher's ablation switches: exact parameter deltas at full size (meta device) against the spec's
sizes, and tiny variants that train, score, use the K/V cache and survive a save/load round trip."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from tiny_clip import tiny_clip, tiny_clip_tokenizer

from dpiqa import models
from dpiqa.models.clip_text import embed_prompts
from dpiqa.models.distill import teacher_loss
from dpiqa.models.prompts import COARSE_SET, DEFAULT_SET, EMPTY_SET, prompt_texts
from dpiqa.models.teacher import DPIQATeacher, TeacherConfig

# ---------------------------------------------------------------- full size, meta device: exact deltas


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def meta(config: TeacherConfig) -> DPIQATeacher:
    return DPIQATeacher.from_config(config, device="meta")


@pytest.fixture(scope="module")
def paper() -> DPIQATeacher:
    return meta(TeacherConfig())


def test_no_text_adapter_removes_exactly_the_text_adapter(paper: DPIQATeacher) -> None:
    model = meta(TeacherConfig(text_adapter=False))
    removed = 2 * (768 * 768 + 768) + 768  # MLP Linear(768,768) -> GELU -> Linear(768,768), gamma (768)
    assert removed == 1_181_952
    assert numel(paper) - numel(model) == removed
    assert trainable(paper) - trainable(model) == removed
    assert model.text_adapter is None and model.parts()["text_adapter"] == []
    assert model.context() is model.prompt_embeddings  # the raw embeddings are the context
    assert tuple(model.prompt_embeddings.shape) == (1485, 768)


def test_no_image_adapter_removes_exactly_the_full_adapter(paper: DPIQATeacher) -> None:
    model = meta(TeacherConfig(image_adapter=False))
    # diffusers FullAdapter defaults: pixel-unshuffle by 8 (3 -> 192 channels), conv_in 3x3 192 -> 320,
    # 1x1 in_convs where the width changes (320 -> 640, 640 -> 1280), and per level 2 residual blocks
    # of conv3x3 c -> c + conv1x1 c -> c, for c = 320, 640, 1280, 1280.
    conv_in = 9 * 192 * 320 + 320
    in_convs = (320 * 640 + 640) + (640 * 1280 + 1280)
    resnets = sum(2 * ((9 * c * c + c) + (c * c + c)) for c in (320, 640, 1280, 1280))
    removed = conv_in + in_convs + resnets
    assert removed == 77_369_280
    assert numel(paper) - numel(model) == removed
    assert trainable(paper) - trainable(model) == removed
    assert model.image_adapter is None and model.parts()["image_adapter"] == []


def level(c: int) -> int:
    """A decoder level: conv3x3 c -> 512 + SE(512, reduction 16: 512 -> 32 -> 512)."""
    return (9 * c * 512 + 512) + (512 * 32 + 32 + 32 * 512 + 512)


@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        ((0, 1), 9_209_920),  # drops the 640- and 320-channel levels, fused conv 2048 -> 1024 inputs
        ((2, 3), 16_582_720),  # drops both 1280-channel levels, fused conv 2048 -> 1024 inputs
        ((3,), 21_924_960),  # keeps the 320-channel level only, fused conv 2048 -> 512 inputs
    ],
)
def test_decoder_levels_remove_the_unused_levels_and_fused_inputs(
    paper: DPIQATeacher,
    levels: tuple[int, ...],
    expected: int,
) -> None:
    model = meta(TeacherConfig(decoder_levels=levels))
    channels = (1280, 1280, 640, 320)
    dropped = [i for i in range(4) if i not in levels]
    fused_inputs = 9 * (2048 - 512 * len(levels)) * 512  # the fused conv3x3's weights on the missing inputs
    removed = sum(level(channels[i]) for i in dropped) + fused_inputs
    assert removed == expected
    assert numel(paper.decoder) - numel(model.decoder) == removed
    assert numel(paper) - numel(model) == removed  # nothing else is removed: the U-Net stays whole
    assert model.decoder.fuse[0].in_channels == 512 * len(levels)
    # Up blocks after the deepest level used feed nothing: they stay (SD weights load) but are frozen.
    unused = model.unet.up_blocks[max(levels) + 1 :]
    assert not any(p.requires_grad for b in unused for p in b.parameters())
    assert trainable(paper) - trainable(model) == removed + sum(numel(b) for b in unused)


def test_prompt_sets_change_the_embedding_buffer_not_the_parameters(paper: DPIQATeacher) -> None:
    for name, k in ((EMPTY_SET, 1), (COARSE_SET, 5 * 9 * 11), (DEFAULT_SET, 5 * 9 * 33)):
        model = meta(TeacherConfig().with_prompt_set(name))
        assert tuple(model.prompt_embeddings.shape) == (k, 768), name
        assert model.config.num_prompts == k and model.config.prompt_set == name
        assert numel(model) == numel(paper) and trainable(model) == trainable(paper)
        assert "prompt_embeddings" in model.state_dict() and "prompt_embeddings" not in dict(model.named_parameters())


@pytest.mark.parametrize("overrides", [{"timestep": 0}, {"timestep": 999}, {"prompt_pooling": "mean"}])
def test_timestep_and_pooling_change_no_parameter(paper: DPIQATeacher, overrides: dict) -> None:
    model = meta(TeacherConfig(**overrides))
    assert numel(model) == numel(paper) and trainable(model) == trainable(paper)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"timestep": 1000}, r"timestep must be an integer in \[0, 999\]"),
        ({"timestep": -1}, "timestep"),
        ({"timestep": 1.5}, "timestep"),
        ({"prompt_pooling": "cls"}, "prompt_pooling must be one of eos, mean"),
        ({"decoder_levels": ()}, "decoder_levels"),
        ({"decoder_levels": (1, 0)}, "strictly increasing"),
        ({"decoder_levels": (0, 4)}, "of the 4 up blocks"),
        ({"prompt_set": EMPTY_SET, "text_encoder": "clip"}, "num_prompts 1485 != the size of prompt set 'empty-1'"),
    ],
)
def test_bad_switches_are_named(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        meta(TeacherConfig(**overrides))


# ---------------------------------------------------------------- tiny variants: train, score, round trip

VARIANTS = {
    "no-text-adapter": {"text_adapter": False},
    "no-image-adapter": {"image_adapter": False},
    "empty-prompt": {"prompt_set": EMPTY_SET},
    "coarse-495": {"prompt_set": COARSE_SET},
    "mean-pooling": {"prompt_pooling": "mean"},
    "t0": {"timestep": 0},
    "t999": {"timestep": 999},
    "levels-0-1": {"decoder_levels": [0, 1]},
    "level-3": {"decoder_levels": [3]},
}


def tiny(overrides: dict) -> DPIQATeacher:
    return models.build("dpiqa-teacher-tiny", overrides=overrides).eval()


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def dead_with_one_prompt(model: DPIQATeacher) -> set[str]:
    """The parameters a single-token context makes irrelevant: each cross-attention's query and key
    projections and the layer norm before it (softmax over one key is 1 whatever the logits), so their
    gradients are zero up to rounding."""
    names = set()
    for block_name, block in model.named_modules():
        if isinstance(block, BasicTransformerBlock):
            for part in ("attn2.to_q", "attn2.to_k", "norm2"):
                names |= {f"{block_name}.{part}.{n}" for n, _ in block.get_submodule(part).named_parameters()}
    return names


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_trains_where_it_should(name: str) -> None:
    model = tiny(VARIANTS[name]).train()
    score, _ = model(images())
    teacher_loss(score, torch.tensor([0.3, 0.7])).backward()

    dead = dead_with_one_prompt(model) if model.config.num_prompts == 1 else set()
    assert (name == "empty-prompt") == bool(dead)
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert [n for n, g in grads.items() if n not in dead and (g is None or not g.any())] == []
    for n in dead:  # zero up to rounding (not missing): tiny next to the same attention's value projection
        live = grads[n.split(".attn2.")[0].rsplit(".norm2.", 1)[0] + ".attn2.to_v.weight"]
        assert grads[n] is not None and grads[n].abs().max() < 1e-6 * live.abs().max(), n
    assert all(p.grad is None for p in model.vae.parameters())
    unused = model.unet.up_blocks[max(model.config.decoder_levels) + 1 :]
    assert (name == "levels-0-1") == bool(unused)
    assert all(not p.requires_grad and p.grad is None for b in unused for p in b.parameters())
    for part in ("text_adapter", "image_adapter"):
        present = getattr(model, part) is not None
        assert present == VARIANTS[name].get(part, True)
        if present:
            assert all(p.grad is not None and p.grad.any() for p in getattr(model, part).parameters())


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_scores_plain_and_cached(name: str) -> None:
    model = tiny(VARIANTS[name])
    x = images(3)
    with torch.inference_mode():
        score, quality_map = model(x)
    assert tuple(score.shape) == (3,) and torch.isfinite(score).all()
    assert tuple(quality_map.shape) == (3, *model.config.map_shape) == (3, 8, 16, 16)
    cached = copy.deepcopy(model)
    cached.prepare_for_inference()
    with torch.inference_mode():
        fast, fast_map = cached(x)
    # Tolerance: fp32, same math; only the reduction order inside the attention kernel may differ.
    torch.testing.assert_close(fast, score, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_map, quality_map, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_round_trips_with_its_switch(name: str, tmp_path: Path) -> None:
    model = tiny(VARIANTS[name])
    x = images()
    with torch.inference_mode():
        before = model(x)
    card = model.save_pretrained(str(tmp_path / "ckpt"))
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert {k: saved[k] for k in VARIANTS[name]} == VARIANTS[name]
    assert card["ablation"] == VARIANTS[name] and card["prompts"]["pooling"] == model.config.prompt_pooling
    loaded = models.load_model(str(tmp_path / "ckpt"))
    assert loaded.config == model.config
    with torch.inference_mode():
        after = loaded(x)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_switches_do_what_they_say() -> None:
    paper, x = tiny({}), images()

    seen: dict[str, object] = {}

    def unet_kwargs(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen["residuals"] = kwargs["down_intrablock_additional_residuals"]
        seen["context"] = kwargs["encoder_hidden_states"]

    no_image = tiny({"image_adapter": False})
    no_image.unet.register_forward_pre_hook(unet_kwargs, with_kwargs=True)
    with torch.no_grad():
        no_image(x)
    assert seen["residuals"] is None

    no_text = tiny({"text_adapter": False})
    no_text.unet.register_forward_pre_hook(unet_kwargs, with_kwargs=True)
    with torch.no_grad():
        no_text(x)
    assert torch.equal(seen["context"], no_text.prompt_embeddings.expand(2, -1, -1))

    empty = tiny({"prompt_set": EMPTY_SET})
    assert tuple(empty.prompt_embeddings.shape) == (1, 16) and empty.config.num_prompts == 1
    assert tuple(tiny({"prompt_set": COARSE_SET}).prompt_embeddings.shape) == (495, 16)

    levels = tiny({"decoder_levels": [0, 1]})
    shapes = []
    levels.decoder.register_forward_pre_hook(lambda m, args: shapes.extend(tuple(f.shape[1:]) for f in args[0]))
    with torch.no_grad():
        levels(x)
    assert shapes == [(32, 2, 2), (32, 4, 4)]  # the two deepest up-block outputs of the tiny U-Net
    assert levels.decoder.fuse[0].in_channels == 32 * 2 and paper.decoder.fuse[0].in_channels == 32 * 4


def test_timestep_reaches_the_unet_and_changes_the_scores() -> None:
    scores = {}
    for t in (0, 1, 999):
        model = tiny({"timestep": t})
        timesteps: list[torch.Tensor] = []
        model.unet.time_proj.register_forward_pre_hook(lambda m, args, seen=timesteps: seen.append(args[0]))
        with torch.no_grad():
            scores[t] = model(images())[0]
        assert len(timesteps) == 1 and timesteps[0].tolist() == [t, t]
    # Same seed, so same weights: only t differs.
    assert not torch.allclose(scores[0], scores[999]) and not torch.allclose(scores[1], scores[999])


# ---------------------------------------------------------------- prompt embeddings: named sets, pooling


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny SD folder (vae/, unet/) and a tiny CLIP text model + tokenizer, saved as the real ones are."""
    root = tmp_path_factory.mktemp("tiny-weights")
    config = TeacherConfig.tiny()
    torch.manual_seed(2)
    AutoencoderKL(**config.vae).save_pretrained(root / "sd" / "vae")
    UNet2DConditionModel(**config.unet).save_pretrained(root / "sd" / "unet")
    tokenizer = tiny_clip_tokenizer()
    clip = tiny_clip(config.prompt_dim, tokenizer)
    clip.save_pretrained(root / "clip")
    tokenizer.save_pretrained(root / "clip")
    return {"sd": str(root / "sd"), "clip": str(root / "clip"), "clip_model": clip, "tokenizer": tokenizer}


def by_hand(tiny_weights: dict, prompt: str) -> dict[str, torch.Tensor]:
    """EOS and mean pooling of one prompt, computed alone (no padding) from CLIP's final hidden states."""
    clip, tokenizer = tiny_weights["clip_model"], tiny_weights["tokenizer"]
    ids = tokenizer([prompt], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = clip(input_ids=ids).last_hidden_state[0]  # after CLIP's final layer norm
    eos = ids[0].tolist().index(tokenizer.eos_token_id)
    assert eos == len(ids[0]) - 1  # start, the prompt's tokens, end
    w = clip.text_projection.weight  # (projection_dim, hidden): no bias
    return {"eos": hidden[eos] @ w.T, "mean": hidden.mean(0) @ w.T}


PROMPTS = ["a photo of a cat", "bad", "", "a blurry photo of a dog, which is of poor quality"]


@pytest.mark.parametrize("pooling", ["eos", "mean"])
def test_prompt_pooling_by_hand(tiny_weights: dict, pooling: str) -> None:
    # batch_size 2 pads "bad" to the cat prompt's length and "" to the dog prompt's: padding must not count.
    embeddings = embed_prompts(PROMPTS, tiny_weights["clip"], pooling=pooling, batch_size=2)
    expected = torch.stack([by_hand(tiny_weights, p)[pooling] for p in PROMPTS])
    torch.testing.assert_close(embeddings, expected, rtol=1e-5, atol=1e-6)
    other = torch.stack([by_hand(tiny_weights, p)["mean" if pooling == "eos" else "eos"] for p in PROMPTS])
    assert not torch.allclose(embeddings, other, atol=1e-3)


def test_from_stable_diffusion_takes_the_prompt_set_by_name(tiny_weights: dict, tmp_path: Path) -> None:
    config = TeacherConfig.tiny()
    config.prompt_pooling = "mean"
    config.text_adapter = False
    teacher = DPIQATeacher.from_stable_diffusion(
        sd=tiny_weights["sd"],
        clip=tiny_weights["clip"],
        prompts=EMPTY_SET,
        config=config,
    ).eval()
    assert teacher.config.prompt_set == EMPTY_SET and teacher.config.num_prompts == 1
    assert teacher.config.prompt_pooling == "mean" and teacher.text_adapter is None
    # The empty prompt is the start and end tokens: its mean-pooled feature is their mean, projected.
    torch.testing.assert_close(teacher.prompt_embeddings[0], by_hand(tiny_weights, "")["mean"], rtol=1e-5, atol=1e-6)
    card = teacher.save_pretrained(str(tmp_path / "ckpt"))
    assert card["prompts"] == {"set": EMPTY_SET, "count": 1, "pooling": "mean", "text_encoder": tiny_weights["clip"]}
    assert card["ablation"] == {"prompt_set": EMPTY_SET, "prompt_pooling": "mean", "text_adapter": False}

    # No prompts argument: the set the config names (here the coarse 495, EOS-pooled).
    coarse = DPIQATeacher.from_stable_diffusion(
        sd=tiny_weights["sd"],
        clip=tiny_weights["clip"],
        config=TeacherConfig.tiny().with_prompt_set(COARSE_SET),
        batch_size=128,
    )
    assert coarse.config.prompt_set == COARSE_SET and tuple(coarse.prompt_embeddings.shape) == (495, 16)
    texts = prompt_texts(COARSE_SET)
    for i in (0, 494):
        torch.testing.assert_close(
            coarse.prompt_embeddings[i], by_hand(tiny_weights, texts[i])["eos"], rtol=1e-5, atol=1e-6
        )

    with pytest.raises(ValueError, match="unknown prompt set 'dpiqa-fine-9'"):
        DPIQATeacher.from_stable_diffusion(
            sd=tiny_weights["sd"], clip=tiny_weights["clip"], prompts="dpiqa-fine-9", config=TeacherConfig.tiny()
        )
