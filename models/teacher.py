"""The DP-IQA teacher: frozen SD VAE encoder, SD U-Net at t=1 with image and text adapters, quality decoder."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.adapter import FullAdapter
from diffusers.models.attention_processor import Attention
from diffusers.utils import is_accelerate_available
from timm.layers import SEModule
from torch import nn

from dpiqa.models import checkpoint
from dpiqa.models.attention import CachedContextAttnProcessor, kv_cache_usable
from dpiqa.models.checkpoint import CheckpointMixin
from dpiqa.models.clip_text import embed_prompts
from dpiqa.models.layers import ScoreMLP
from dpiqa.models.pretrained import CLIP_TEXT, STABLE_DIFFUSION, fetch, sd_files
from dpiqa.models.prompts import PROMPT_SETS, prompt_set_name, prompt_texts
from dpiqa.models.teacher_config import (  # noqa: F401 - re-exported: the teacher's config lives beside it
    NUM_TRAIN_TIMESTEPS,
    POOLINGS,
    TeacherConfig,
    sd15_unet_config,
    sd15_vae_config,
)

log = logging.getLogger(__name__)

# Parameters DP-IQA's released code carries but never uses (see `DPIQATeacher`); we do not build them.
DROPPED_REFERENCE_PARAMETERS = 13_336


class TextAdapter(nn.Module):
    """`E' = E + gamma * MLP(E)`, MLP = Linear -> GELU -> Linear, gamma a learnable per-channel scale.

    Args:
        dim: prompt embedding size (768).
        gamma_init: initial value of every entry of gamma (1e-4, so training starts from E' ~ E).
    """

    def __init__(self, dim: int, gamma_init: float = 1e-4) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.gamma = nn.Parameter(torch.full((dim,), gamma_init))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings + self.gamma * self.mlp(embeddings)


class QualityDecoder(nn.Module):
    """U-Net up-block features -> the quality map.

    Each level is resized to the map size (bicubic), then conv3x3 -> SE; the levels are concatenated,
    then conv3x3 -> SE; then 1x1 convs with a ReLU after each (512->128->32->8 at full size).

    Args:
        in_channels: channels of each feature level (1280, 1280, 640, 320).
        channels: width of the 3x3 convs (512).
        se_reduction: squeeze-and-excitation reduction (16).
        hidden: widths of the 1x1 convs before the map (128, 32).
        out_channels: channels of the map (8).
        size: side of the map (64).
        se_bias: the SE layers' two 1x1 convs have biases (the released checkpoints' have none).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int = 512,
        se_reduction: int = 16,
        hidden: Sequence[int] = (128, 32),
        out_channels: int = 8,
        size: int = 64,
        se_bias: bool = True,
    ) -> None:
        super().__init__()
        self.size = size
        # timm's SE block; rd_channels given explicitly so tiny widths are not rounded up to 8.
        self.levels = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c, channels, 3, padding=1),
                SEModule(channels, rd_channels=channels // se_reduction, bias=se_bias),
            )
            for c in in_channels
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(channels * len(in_channels), channels, 3, padding=1),
            SEModule(channels, rd_channels=channels // se_reduction, bias=se_bias),
        )
        layers: list[nn.Module] = []
        width = channels
        for out in (*hidden, out_channels):
            layers += [nn.Conv2d(width, out, 1), nn.ReLU(inplace=True)]
            width = out
        self.to_map = nn.Sequential(*layers)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        resized = [
            # Bicubic resampling to the same size is the identity, so levels already at the map size skip it.
            f
            if tuple(f.shape[-2:]) == (self.size, self.size)
            else F.interpolate(f, size=(self.size, self.size), mode="bicubic", align_corners=False)
            for f in features
        ]
        fused = self.fuse(torch.cat([level(f) for level, f in zip(self.levels, resized, strict=True)], dim=1))
        return self.to_map(fused)


class DPIQATeacher(CheckpointMixin, nn.Module):
    """The DP-IQA teacher (Stable Diffusion prior + text and image adapters; its fields: `TeacherConfig`).

    image `x` (value range of the config) ->
      latent = frozen SD VAE encoder posterior mean * scaling_factor (the mean, so inference is
        deterministic; the released code sampled; `train_latent="sample"` samples in training mode);
      image adapter = diffusers `FullAdapter` on the image in [0, 1], its four outputs added inside the
        four U-Net down blocks (`down_intrablock_additional_residuals`);
      context E' = E + gamma * MLP(E) from the K stored prompt embeddings E (a buffer, so they live in
        the checkpoint);
      SD U-Net at timestep 1 on the clean latent, cross-attending to E'; the outputs of its four up
        blocks (captured with forward hooks, the U-Net runs unmodified) are the features;
    -> `QualityDecoder` -> quality map `(B, 8, 64, 64)` -> `ScoreMLP` -> score `(B,)` = MOS / mos_scale.

    Everything trains except the VAE (frozen, and kept in eval mode even when the teacher trains) and
    the U-Net's noise-prediction output (`conv_norm_out`, `conv_out`: 12,164 parameters at full size,
    kept so SD weights load unchanged, frozen because nothing uses them: DDP would otherwise stop on
    parameters without gradients). Only the VAE's encoder and `quant_conv` are built.

    The released DP-IQA code carries 13,336 parameters that its forward pass never uses; they do not
    affect any output, so we do not build them (`dpiqa convert`, `models/authors.py`, drops them from the
    released checkpoints).

    `prepare_for_inference()` computes E' and every cross-attention layer's keys and values once
    (same math); `train()` drops them again.

    Ablation switches (`TeacherConfig`; the defaults are the paper's model): without the text adapter
    the context is E itself; without the image adapter the U-Net gets no residuals; `decoder_levels`
    picks the up-block outputs the decoder fuses (its fused conv takes 512 x len(levels) channels), and
    up blocks after the last level picked are frozen; `timestep` is the U-Net's t. With a single prompt
    (K = 1) every cross-attention softmax is over one key, so the cross-attention queries and keys (and
    the layer norm before them) cannot affect any output: their gradients are zero up to rounding.
    """

    architecture: ClassVar[str] = "dpiqa-teacher"
    config_class: ClassVar[type] = TeacherConfig

    def __init__(
        self,
        config: TeacherConfig,
        vae: AutoencoderKL | None = None,
        unet: UNet2DConditionModel | None = None,
        prompt_embeddings: torch.Tensor | None = None,
    ) -> None:
        """Build a teacher; pretrained `vae`, `unet` and `prompt_embeddings` may be passed in (they
        must match `config`), the rest is randomly initialised."""
        super().__init__()
        config.validate()
        self.config = config
        self.vae = vae if vae is not None else AutoencoderKL.from_config(config.vae)
        # Only the encoder is used; dropping the decoder saves ~49.5 M parameters of memory.
        del self.vae.decoder
        del self.vae.post_quant_conv
        self.vae.requires_grad_(False)
        self.vae.eval()
        self.unet = unet if unet is not None else UNet2DConditionModel.from_config(config.unet)
        self.unet.conv_norm_out.requires_grad_(False)
        self.unet.conv_out.requires_grad_(False)
        self.image_adapter = (
            FullAdapter(
                in_channels=3,
                channels=list(config.adapter_channels),
                num_res_blocks=config.adapter_res_blocks,
                downscale_factor=config.adapter_downscale,
            )
            if config.image_adapter
            else None
        )
        self.text_adapter = TextAdapter(config.prompt_dim, config.text_adapter_gamma) if config.text_adapter else None
        if prompt_embeddings is None:
            prompt_embeddings = torch.randn(config.num_prompts, config.prompt_dim)
        if tuple(prompt_embeddings.shape) != (config.num_prompts, config.prompt_dim):
            raise ValueError(
                f"prompt embeddings {tuple(prompt_embeddings.shape)} do not match the config "
                f"({config.num_prompts}, {config.prompt_dim})"
            )
        self.register_buffer("prompt_embeddings", prompt_embeddings)
        self.register_buffer("_cached_context", None, persistent=False)
        self.decoder = QualityDecoder(
            [config.feature_channels[i] for i in config.decoder_levels],
            config.decoder_channels,
            config.se_reduction,
            config.map_hidden,
            config.map_channels,
            config.map_size,
            config.se_bias,
        )
        self.mlp = ScoreMLP(config.map_channels * config.map_size**2, config.head_hidden)
        self._features: list[torch.Tensor] = []
        for block in self.unet.up_blocks:
            block.register_forward_hook(self._capture)
        # Up blocks after the deepest level used only feed the unused noise prediction.
        for block in self.unet.up_blocks[max(config.decoder_levels) + 1 :]:
            block.requires_grad_(False)

    def _capture(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self._features.append(output)

    def train(self, mode: bool = True) -> DPIQATeacher:
        super().train(mode)
        self.vae.eval()
        if mode:
            self.drop_inference_cache()
        return self

    def parts(self) -> dict[str, list[nn.Module]]:
        """The named parts, for per-part parameter and FLOP counts."""
        vae_encoder = [m for m in (self.vae.encoder, self.vae.quant_conv) if m is not None]
        return {
            "vae_encoder": vae_encoder,
            "unet": [self.unet],
            "image_adapter": [self.image_adapter] if self.image_adapter is not None else [],
            "text_adapter": [self.text_adapter] if self.text_adapter is not None else [],
            "decoder": [self.decoder],
            "head": [self.mlp],
        }

    def context(self) -> torch.Tensor:
        """The text-adapted prompt context E' `(K, D)` (E itself without a text adapter), the same for
        every image."""
        if self.text_adapter is None:
            return self.prompt_embeddings
        return self.text_adapter(self.prompt_embeddings)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in the value range -> scaled SD latents (posterior mean; a sample when training with
        `train_latent="sample"`, and always with `inference_latent="sample"`, the released code's way). No
        gradient flows into the frozen VAE."""
        with torch.no_grad():
            posterior = self.vae.encode(x).latent_dist
            sample = self.config.inference_latent == "sample" or (
                self.training and self.config.train_latent == "sample"
            )
            latent = posterior.sample() if sample else posterior.mean
        return latent * self.vae.config.scaling_factor

    def unet_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images `(B, 3, H, W)` -> the four U-Net up-block outputs (1280x16x16, 1280x32x32, 640x64x64,
        320x64x64 at 512), whichever `decoder_levels` uses."""
        residuals = None
        if self.image_adapter is not None:
            lo, hi = self.config.value_range
            unit = x if (lo, hi) == (0.0, 1.0) else (x - lo) / (hi - lo)
            residuals = list(self.image_adapter(unit))
        cached = self._cached_context is not None and kv_cache_usable()
        context = self._cached_context if cached else self.context()
        self._features = []
        try:
            self.unet(
                self.encode(x),
                self.config.timestep,
                encoder_hidden_states=context.unsqueeze(0).expand(x.shape[0], -1, -1),
                down_intrablock_additional_residuals=residuals,
                return_dict=False,
            )
            return self._features
        finally:
            self._features = []

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images `(B, 3, H, W)` in the value range -> quality map `(B, 8, 64, 64)` (the distillation target)."""
        features = self.unet_features(x)
        return self.decoder([features[i] for i in self.config.decoder_levels])

    def forward_head(self, quality_map: torch.Tensor) -> torch.Tensor:
        return self.mlp(quality_map)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns `(score (B,), quality map (B, 8, 64, 64))`."""
        quality_map = self.forward_features(x)
        return self.forward_head(quality_map), quality_map

    @torch.no_grad()
    def prepare_for_inference(self) -> None:
        """Compute E' and the keys/values of every cross-attention layer for it, once.

        Call after moving the model to its device and after any change of weights (`Scorer` does). The
        cache is used only without gradients, and `train()` drops it.
        """
        if self.training:
            raise RuntimeError("prepare_for_inference() is for inference: call .eval() first")
        self.drop_inference_cache()
        context = self.context()
        self._cached_context = context
        layers = [m for m in self.unet.modules() if isinstance(m, Attention) and m.is_cross_attention]
        for attn in layers:
            attn.set_processor(CachedContextAttnProcessor(attn, context, fallback=attn.processor))
        log.debug("cached the prompt context's keys and values of %d cross-attention layers", len(layers))

    def drop_inference_cache(self) -> None:
        """Undo `prepare_for_inference()`: the original attention processors, no cached context."""
        self._cached_context = None
        for m in self.unet.modules():
            if isinstance(m, Attention) and isinstance(m.processor, CachedContextAttnProcessor):
                m.set_processor(m.processor.fallback)

    def card(self) -> dict:
        card = super().card()
        card["prompts"] = {
            "set": self.config.prompt_set,
            "count": self.config.num_prompts,
            "pooling": self.config.prompt_pooling,
            "text_encoder": self.config.text_encoder or "random (not computed from text)",
        }
        card["switches"] = self.config.switches()
        card["ablation"] = self.config.changed_switches()
        if self.config.inference_latent == "sample":
            card["latent"] = (
                "a sample of the VAE posterior at every forward pass (as the released code): not deterministic"
            )
        else:
            card["latent"] = "VAE posterior mean (deterministic)" + (
                "; sampled in training" if self.config.train_latent == "sample" else ""
            )
        card["dropped_reference_parameters"] = {
            "count": DROPPED_REFERENCE_PARAMETERS,
            "why": "unused by the released DP-IQA code's forward pass; not built here",
        }
        return card

    @classmethod
    def from_stable_diffusion(
        cls,
        sd: str = STABLE_DIFFUSION,
        clip: str = CLIP_TEXT,
        prompts: str | Sequence[str] | None = None,
        config: TeacherConfig | None = None,
        variant: str | None = None,
        storage_options: dict | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
    ) -> DPIQATeacher:
        """A teacher with the SD VAE and U-Net weights and prompt embeddings computed with CLIP; the
        adapters, decoder and head are randomly initialised (ready to train).

        Args:
            sd: a diffusers Stable Diffusion folder (`vae/`, `unet/`): Hub id, local folder or fsspec URL
                (its `vae/` and `unet/` weights are copied to the local cache first). Weights are read from
                safetensors where a folder has them, else from `.bin` files (older snapshots; loaded with
                `weights_only`, tensors only).
            clip: a transformers CLIP model with a text projection (Hub id, local folder or fsspec URL);
                the prompt embeddings are its projected text features (pooled as `config.prompt_pooling`
                says), computed once here.
            prompts: a named prompt set (`dpiqa.models.prompts.PROMPT_SETS`: `dpiqa-quality-1485`,
                `dpiqa-coarse-495`, `empty-1`) or the prompt texts; default the set `config.prompt_set`
                names (the spec's 1485 for the default config).
            config: other settings (value range, decoder sizes, ablation switches, ...); its VAE, U-Net and
                prompt fields are replaced by what is loaded.
            variant: diffusers weight variant (e.g. `fp16`); default the full-precision files.
            storage_options: fsspec options for URLs (e.g. an S3 endpoint).
            device: where the model is built.
            batch_size: prompts per text-encoder call.
        """
        config = config or TeacherConfig()
        if prompts is None and config.prompt_set not in PROMPT_SETS:
            raise ValueError(f"config.prompt_set {config.prompt_set!r} is not a named set: pass the texts as prompts")
        name = config.prompt_set if prompts is None else prompts
        texts = prompt_texts(name) if isinstance(name, str) else list(name)
        sd_location = fetch(sd, storage_options, lambda files: sd_files(files, variant, sd))
        # safetensors where present, else .bin through torch.load(weights_only=True), as diffusers decides;
        # skipping random init needs accelerate, so use it where installed.
        load = {"variant": variant, "low_cpu_mem_usage": is_accelerate_available()}
        vae = AutoencoderKL.from_pretrained(sd_location, subfolder="vae", **load)
        unet = UNet2DConditionModel.from_pretrained(sd_location, subfolder="unet", **load)
        embeddings = embed_prompts(
            texts, clip, pooling=config.prompt_pooling, storage_options=storage_options, batch_size=batch_size
        )
        config = dataclasses.replace(
            config,
            vae=_plain_config(vae.config),
            unet=_plain_config(unet.config),
            num_prompts=len(texts),
            prompt_dim=int(embeddings.shape[1]),
            prompt_set=prompt_set_name(texts),
            text_encoder=clip,
        )
        with torch.device(device):
            model = cls(config, vae=vae.to(device), unet=unet.to(device), prompt_embeddings=embeddings.to(device))
        log.info(
            "teacher from %s + %d prompt embeddings from %s: %s parameters",
            sd,
            len(texts),
            clip,
            f"{checkpoint.parameter_counts(model)['total']:,}",
        )
        return model


def _plain_config(config: Any) -> dict:
    """A diffusers config as a JSON-ready dict, without its bookkeeping (`_class_name`, ...)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(config).items() if not k.startswith("_")}
