"""The DP-IQA teacher's configuration (`TeacherConfig`) and the Stable Diffusion v1.5 component configs it
defaults to. No torch or diffusers here: the driver reads a teacher's identity and input contract from this
(`dpiqa.models.describe`) without importing them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from dpiqa.models.preprocessing import ImageModelConfig
from dpiqa.models.prompts import DEFAULT_SET, PROMPT_SETS, prompt_set_size, prompt_texts

# SD v1.5 was trained on 1000 DDPM timesteps; the U-Net's time embedding has seen t in [0, 999] only.
NUM_TRAIN_TIMESTEPS = 1000
POOLINGS = ("eos", "mean")


def sd15_vae_config() -> dict:
    """The Stable Diffusion v1.5 VAE (`vae/config.json`), as diffusers' `AutoencoderKL` takes it."""
    return {
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 512,
        "scaling_factor": 0.18215,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    }


def sd15_unet_config() -> dict:
    """The Stable Diffusion v1.5 U-Net (`unet/config.json`), as diffusers' `UNet2DConditionModel` takes it."""
    return {
        "act_fn": "silu",
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    }


@dataclass
class TeacherConfig(ImageModelConfig):
    """Sizes of a teacher; the defaults are the paper's (SD v1.5 at 512, 1485 prompts, 8x64x64 map).

    Args:
        vae: diffusers `AutoencoderKL` config (only its encoder is built).
        unet: diffusers `UNet2DConditionModel` config; `cross_attention_dim` must equal `prompt_dim`.
        adapter_channels: `FullAdapter` channels per level, equal to the U-Net's `block_out_channels`.
        adapter_res_blocks: `FullAdapter` residual blocks per level.
        adapter_downscale: `FullAdapter` pixel-unshuffle factor, equal to the VAE's downscale factor.
        num_prompts: K, the number of quality prompts (rows of the stored prompt embeddings); for a
            named `prompt_set` with embeddings computed from text it must be that set's size
            (`with_prompt_set` sets both).
        prompt_dim: the prompt embedding size (CLIP ViT-L/14's projected text feature: 768).
        prompt_set: which texts the embeddings encode: a `dpiqa.models.prompts.PROMPT_SETS` name
            (`dpiqa-quality-1485`, the ablations' `dpiqa-coarse-495` and `empty-1`) or `custom-...`.
        prompt_pooling: how each prompt's CLIP text feature was pooled: `eos` (the paper's: CLIP's
            projected pooled output, the final hidden state at the end-of-text token) or `mean` (ablation:
            the mean of the final hidden states over the prompt's tokens, padding excluded, then CLIP's
            text projection). A record of how `from_stable_diffusion` computed the embeddings.
        text_encoder: the CLIP model the embeddings were computed with (empty: random embeddings).
        text_adapter: build the text adapter (the paper's); without it (ablation) the raw prompt
            embeddings E are the cross-attention context.
        text_adapter_gamma: initial value of the text adapter's learnable per-channel scale.
        image_adapter: build the image adapter (the paper's); without it (ablation) the image reaches the
            U-Net through the latent only.
        timestep: the U-Net timestep, any integer in [0, 999] (the range SD v1.5's time embedding was
            trained on); no noise is added at any t. The paper's is 1.
        decoder_levels: which U-Net up-block outputs feed the decoder, as indices into the up blocks,
            deepest first (0: 1280x16x16, 1: 1280x32x32, 2: 640x64x64, 3: 320x64x64 at full size);
            strictly increasing. The paper's is all four. Up blocks after the last level used still run
            (they are part of the U-Net) but are frozen: nothing depends on them.
        decoder_channels: channels of the decoder's per-level and fused 3x3 convs (512).
        se_reduction: squeeze-and-excitation reduction of the decoder (16).
        se_bias: the decoder's squeeze-and-excitation layers have biases (ours); the released checkpoints'
            have none (`dpiqa convert` sets False, so a converted teacher computes exactly their function).
        map_hidden: channels of the 1x1 convs between the fused features and the map (128, 32).
        map_channels: channels of the quality map (8).
        map_size: side of the quality map; every feature level is resized to it (64).
        head_hidden: width of the score MLP (512).
        image_size: input side.
        interpolation: resize filter of the preprocessing.
        value_range: input float range: `(0, 1)` is faithful to the released checkpoints, `(-1, 1)` is
            what the SD VAE was trained on. The image adapter always sees the image in [0, 1].
        train_latent: `mean` (deterministic) or `sample` (draw from the VAE posterior in training mode,
            as the released code did at all times).
        inference_latent: `mean` (the posterior mean: deterministic scores, our default) or `sample` (a fresh
            draw from the VAE posterior at every forward pass, in inference too, as the released code did:
            scores vary from run to run). With `sample` the latent is sampled in training as well.
        mos_scale: the model predicts MOS / mos_scale; scores are reported times this, in MOS units.
    """

    vae: dict = field(default_factory=sd15_vae_config)
    unet: dict = field(default_factory=sd15_unet_config)
    adapter_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    adapter_res_blocks: int = 2
    adapter_downscale: int = 8
    num_prompts: int = 1485
    prompt_dim: int = 768
    prompt_set: str = DEFAULT_SET
    prompt_pooling: str = "eos"
    text_encoder: str = ""
    text_adapter: bool = True
    text_adapter_gamma: float = 1e-4
    image_adapter: bool = True
    timestep: int = 1
    decoder_levels: tuple[int, ...] = (0, 1, 2, 3)
    decoder_channels: int = 512
    se_reduction: int = 16
    se_bias: bool = True
    map_hidden: tuple[int, ...] = (128, 32)
    map_channels: int = 8
    map_size: int = 64
    head_hidden: int = 512
    image_size: int = 512
    interpolation: str = "bilinear"
    value_range: tuple[float, float] = (0.0, 1.0)
    train_latent: str = "mean"
    inference_latent: str = "mean"
    mos_scale: float = 100.0

    @classmethod
    def tiny(cls) -> TeacherConfig:
        """A structurally complete teacher small enough for CPU tests (0.63 M parameters).

        The structure is kept, only widths shrink: a 4-level VAE (downscale 8, so the adapter's
        pixel-unshuffle and the U-Net's levels line up as at full size) and a 4-level U-Net with the
        SD block types, so there are 4 up-block feature levels (32x2x2, 32x4x4, 16x8x8, 16x8x8 at 64 px).
        """
        return cls(
            vae={
                "block_out_channels": [8, 8, 16, 16],
                "down_block_types": ["DownEncoderBlock2D"] * 4,
                "up_block_types": ["UpDecoderBlock2D"] * 4,
                "latent_channels": 4,
                "layers_per_block": 1,
                "norm_num_groups": 4,
                "sample_size": 64,
                "scaling_factor": 0.18215,
            },
            unet={
                **sd15_unet_config(),
                "attention_head_dim": 2,
                "block_out_channels": [16, 16, 32, 32],
                "cross_attention_dim": 16,
                "layers_per_block": 1,
                "norm_num_groups": 8,
                "sample_size": 8,
            },
            adapter_channels=(16, 16, 32, 32),
            adapter_res_blocks=1,
            num_prompts=6,
            prompt_dim=16,
            decoder_channels=32,
            se_reduction=4,
            map_hidden=(16, 8),
            map_size=16,
            head_hidden=32,
            image_size=64,
        )

    @classmethod
    def small(cls) -> TeacherConfig:
        """A teacher that trains on two CPU cores in minutes (64 px, ~2 M parameters): the full structure
        at reduced widths, for reports and ablations made without the Stable Diffusion and CLIP weights.
        Its prompt context is K = 64 random 32-d embeddings (the prompts' meaning comes with CLIP; 1485
        of them would cost 3x the time and mean nothing more at random)."""
        tiny = cls.tiny()  # its VAE, map size and 64 px input stay
        return dataclasses.replace(
            tiny,
            unet={
                **tiny.unet,
                "attention_head_dim": 4,
                "block_out_channels": [32, 32, 64, 64],
                "cross_attention_dim": 32,
                "sample_size": 8,
            },
            adapter_channels=(32, 32, 64, 64),
            num_prompts=64,
            prompt_set="random-64",
            prompt_dim=32,
            decoder_channels=64,
            se_reduction=8,
            map_hidden=(32, 16),
            head_hidden=128,
        )

    # The ablation switches; the defaults are the paper's model.
    SWITCHES: ClassVar[tuple[str, ...]] = (
        "text_adapter",
        "image_adapter",
        "prompt_set",
        "prompt_pooling",
        "timestep",
        "decoder_levels",
    )

    def switches(self) -> dict[str, Any]:
        """The ablation switches' values (JSON types), the paper's model being the defaults."""
        return {name: list(v) if isinstance(v := getattr(self, name), tuple) else v for name in self.SWITCHES}

    def changed_switches(self) -> dict[str, Any]:
        """The switches that differ from the paper's model."""
        paper = TeacherConfig().switches()
        return {name: value for name, value in self.switches().items() if value != paper[name]}

    def with_prompt_set(self, name: str) -> TeacherConfig:
        """This config with a named prompt set and K = its size (the embeddings still to be computed).

        Args:
            name: a `dpiqa.models.prompts.PROMPT_SETS` name.
        """
        return dataclasses.replace(self, prompt_set=name, num_prompts=len(prompt_texts(name)))

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """Channels of the U-Net's up-block outputs, deepest first (1280, 1280, 640, 320 for SD v1.5)."""
        return tuple(reversed(self.unet["block_out_channels"]))

    def validate(self) -> None:
        """Raise `ValueError` naming the first inconsistency between the parts' sizes."""
        unet_channels = tuple(self.unet["block_out_channels"])
        vae_downscale = 2 ** (len(self.vae["block_out_channels"]) - 1)
        problems = [
            (
                self.unet.get("cross_attention_dim") != self.prompt_dim,
                f"unet cross_attention_dim {self.unet.get('cross_attention_dim')} != prompt_dim {self.prompt_dim}",
            ),
            (
                tuple(self.adapter_channels) != unet_channels,
                f"adapter_channels {tuple(self.adapter_channels)} != unet block_out_channels {unet_channels}",
            ),
            (
                self.adapter_downscale != vae_downscale,
                f"adapter_downscale {self.adapter_downscale} != the VAE's downscale factor {vae_downscale}",
            ),
            (
                tuple(self.value_range) not in ((0.0, 1.0), (-1.0, 1.0)),
                f"value_range must be (0, 1) or (-1, 1), not {self.value_range}",
            ),
            (
                self.train_latent not in ("mean", "sample"),
                f"train_latent must be mean or sample, not {self.train_latent!r}",
            ),
            (
                self.inference_latent not in ("mean", "sample"),
                f"inference_latent must be mean or sample, not {self.inference_latent!r}",
            ),
            (
                self.image_size % (self.adapter_downscale * 2 ** (len(unet_channels) - 1)) != 0,
                f"image_size {self.image_size} is not a multiple of the total downscale factor",
            ),
            (
                isinstance(self.timestep, bool)
                or not isinstance(self.timestep, int)
                or not 0 <= self.timestep < NUM_TRAIN_TIMESTEPS,
                f"timestep must be an integer in [0, {NUM_TRAIN_TIMESTEPS - 1}], not {self.timestep!r}",
            ),
            (
                self.prompt_pooling not in POOLINGS,
                f"prompt_pooling must be one of {', '.join(POOLINGS)}, not {self.prompt_pooling!r}",
            ),
            (
                not self.decoder_levels
                or list(self.decoder_levels) != sorted(set(self.decoder_levels))
                or not set(self.decoder_levels) <= set(range(len(unet_channels))),
                f"decoder_levels must be strictly increasing indices of the {len(unet_channels)} up blocks, "
                f"not {tuple(self.decoder_levels)}",
            ),
            (
                bool(self.text_encoder)
                and self.prompt_set in PROMPT_SETS
                and self.num_prompts != prompt_set_size(self.prompt_set),
                f"num_prompts {self.num_prompts} != the size of prompt set {self.prompt_set!r} "
                f"({prompt_set_size(self.prompt_set) if self.prompt_set in PROMPT_SETS else '-'})",
            ),
        ]
        for bad, message in problems:
            if bad:
                raise ValueError(f"TeacherConfig: {message}")
