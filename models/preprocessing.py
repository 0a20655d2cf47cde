"""The model input contract: size, resize filter and value range, read from a model's config."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where tensors are made, not by the driver or the decoder
    import torch

# Statistics a model can ask to be measured on the decoded image at its own size, before the resize to its
# input, where a resize would erase them (`Preprocessing.statistics`): name -> values per image.
STATISTICS = {"jpeg_grid": 2}
JPEG_BLOCK = 8


def jpeg_grid(gray, lines: int = 512) -> list[float]:  # 2-D numpy array or torch tensor, 0..255
    """How strongly an 8-pixel block grid shows in an image: per axis (across columns, then across rows), the
    mean absolute luminance step at the grid phase where it is largest, over the mean at the other 7 phases,
    as a log ratio (about 0 for an image without blocks; JPEG's blocks raise it, the more so the coarser the
    quantisation). The phase is searched, not assumed, so that a JPEG cropped after compression still shows
    its grid; a resize after compression erases it, which is why it is measured before the model's resize.
    About `lines` rows (columns) are sampled, at an odd stride so that every row of a block is sampled alike:
    a 12-megapixel photograph costs milliseconds, not a pass over every pixel.

    Written here rather than taken from a library: no-reference blockiness measures in the literature (e.g.
    Wang, Sheikh and Bovik's 2002 JPEG quality measure) are this idea with other weighting, and none ships in
    a package we use. Works on numpy arrays (any dtype) and torch tensors alike (the GPU decoder calls it on
    the device).
    """
    out = []
    for plane in (gray, gray.T):  # steps across columns, then across rows
        stride = max(1, plane.shape[0] // lines) | 1
        sampled = plane[::stride]
        sampled = sampled.astype(np.int16) if isinstance(sampled, np.ndarray) else sampled.float()
        steps = (sampled.shape[1] - 1) // JPEG_BLOCK * JPEG_BLOCK  # the steps j (pixel j to j + 1) used
        if steps < 2 * JPEG_BLOCK:  # too small to tell a grid
            out.append(0.0)
            continue
        # phase p: the steps j = p, p + 8, ...; a block edge is the step from pixel 8k + 7 to 8k + 8
        phases = [
            float(abs(sampled[:, p + 1 : steps + 1 : JPEG_BLOCK] - sampled[:, p:steps:JPEG_BLOCK]).mean())
            for p in range(JPEG_BLOCK)
        ]
        top = max(phases)
        rest = (sum(phases) - top) / (JPEG_BLOCK - 1)
        # 0.5 (half a grey level) keeps flat images, whose steps are all about 0, at about 0
        out.append(float(np.log((top + 0.5) / (rest + 0.5))))
    return out


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input (timm's `default_cfg` habit: it travels with the weights).

    Args:
        size: `(height, width)` every image is resized to; the aspect ratio is not kept (as in DP-IQA).
        interpolation: PIL resize filter name (`bilinear`, `bicubic`, `lanczos`, `nearest`).
        value_range: the float range that uint8 0..255 maps to: `(0, 1)` is the DP-IQA default
            ("faithful"), `(-1, 1)` is what the Stable Diffusion VAE was trained on.
        statistics: names from `STATISTICS` measured on the decoded image before the resize and handed to the
            model beside the pixels (float32 `(B, statistics_width)`); `()` for most models.
    """

    size: tuple[int, int] = (512, 512)
    interpolation: str = "bilinear"
    value_range: tuple[float, float] = (0.0, 1.0)
    statistics: tuple[str, ...] = ()

    @property
    def statistics_width(self) -> int:
        return sum(STATISTICS[name] for name in self.statistics)

    def measure(self, gray) -> np.ndarray:  # numpy array or torch tensor
        """`statistics` of one decoded image at its own size, from its luminance `(H, W)` in 0..255."""
        values = [v for name in self.statistics for v in {"jpeg_grid": jpeg_grid}[name](gray)]
        return np.asarray(values, dtype=np.float32)

    def model_kwargs(self, statistics) -> dict:  # a tensor (B, statistics_width) or None
        """The keyword arguments a model call takes beside the pixels: the statistics, for a model that reads
        them (a model that does not, such as the teacher, takes none)."""
        return {"statistics": statistics} if self.statistics else {}

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
        # a student's `aux_features` may name statistics measured before the resize (`STATISTICS`)
        measured = tuple(k for k in getattr(self, "aux_features", "").split("+") if k in STATISTICS)
        return Preprocessing((self.image_size, self.image_size), self.interpolation, self.value_range, measured)

    @property
    def map_shape(self) -> tuple[int, int, int]:
        return (self.map_channels, self.map_size, self.map_size)
