"""The model input contract: size, resize filter and value range, read from a model's config."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where tensors are made, not by the driver or the decoder
    import torch


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input (timm's `default_cfg` habit: it travels with the weights).

    Args:
        size: `(height, width)` every image is resized to; the aspect ratio is not kept (as in DP-IQA).
        interpolation: PIL resize filter name (`bilinear`, `bicubic`, `lanczos`, `nearest`).
        value_range: the float range that uint8 0..255 maps to: `(0, 1)` is the DP-IQA default
            ("faithful"), `(-1, 1)` is what the Stable Diffusion VAE was trained on.
    """

    size: tuple[int, int] = (512, 512)
    interpolation: str = "bilinear"
    value_range: tuple[float, float] = (0.0, 1.0)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def to_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 `(B, H, W, 3)` (already at `size`) -> float `(B, 3, H, W)` in `value_range`."""
        lo, hi = self.value_range
        x = images.permute(0, 3, 1, 2).float()
        return x * ((hi - lo) / 255.0) + lo


class ImageModelConfig:
    """What a model config derives from its fields `image_size`, `interpolation`, `value_range`,
    `map_channels` and `map_size` (both the teacher's and the student's have them)."""

    image_size: int
    interpolation: str
    value_range: tuple[float, float]
    map_channels: int
    map_size: int

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing((self.image_size, self.image_size), self.interpolation, self.value_range)

    @property
    def map_shape(self) -> tuple[int, int, int]:
        return (self.map_channels, self.map_size, self.map_size)
