"""Graded synthetic distortions (blur, noise, JPEG, JPEG 2000, contrast, exposure) at 5 levels each."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, features

from engine.stages.decode import to_rgb

LEVELS = (1, 2, 3, 4, 5)  # 1 = mild .. 5 = severe


@dataclass(frozen=True)
class Distortion:
    """One distortion kind: its parameter at each level.

    Args:
        name: the kind's name (`gaussian_blur`...).
        params: the parameter at levels 1..5.
        unit: what the parameter means.
    """

    name: str
    params: tuple[float, ...]
    unit: str


def _blur(img: Image.Image, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(img.filter(ImageFilter.GaussianBlur(radius=sigma)))


def _noise(img: Image.Image, sigma: float, rng: np.random.Generator) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float64)
    return np.clip(np.rint(arr + rng.normal(0.0, sigma, arr.shape)), 0, 255).astype(np.uint8)


def _encode(img: Image.Image, fmt: str, **options: object) -> np.ndarray:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def _jpeg(img: Image.Image, quality: float, rng: np.random.Generator) -> np.ndarray:
    return _encode(img, "JPEG", quality=int(quality))


def _jpeg2000(img: Image.Image, ratio: float, rng: np.random.Generator) -> np.ndarray:
    # Real JPEG 2000 through Pillow's OpenJPEG codec (bundled with Pillow's wheels): the lossy 9/7
    # wavelet at a fixed compression ratio, as in LIVE/KADID's "jpeg2000 compression". Below about
    # 128 x 128 pixels the strongest ratios reach the codestream's header floor and look alike.
    if not features.check("jpg_2000"):
        raise RuntimeError("this Pillow was built without OpenJPEG: install Pillow's wheel for jpeg2000")
    return _encode(img, "JPEG2000", quality_mode="rates", quality_layers=[ratio], irreversible=True)


def _contrast(img: Image.Image, factor: float, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(ImageEnhance.Contrast(img).enhance(factor))  # blends towards the mean grey


def _exposure(img: Image.Image, ev: float, rng: np.random.Generator) -> np.ndarray:
    # Scaling linear light by 2**ev under a 2.2 display gamma is scaling the stored values by
    # 2**(ev / 2.2); highlights clip at 255 as in an over-exposed photograph.
    arr = np.asarray(img, dtype=np.float64) * 2.0 ** (ev / 2.2)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


DISTORTIONS: dict[str, Distortion] = {
    d.name: d
    for d in (
        Distortion("gaussian_blur", (0.8, 1.5, 2.5, 4.0, 6.5), "standard deviation, pixels"),
        Distortion("gaussian_noise", (4.0, 8.0, 14.0, 24.0, 40.0), "standard deviation, 0-255 units"),
        Distortion("jpeg", (50, 30, 18, 10, 5), "JPEG quality"),
        Distortion("jpeg2000", (16, 32, 64, 128, 256), "compression ratio"),
        Distortion("contrast", (0.75, 0.55, 0.4, 0.28, 0.18), "contrast factor (1 = unchanged)"),
        Distortion("overexposure", (0.5, 1.0, 1.5, 2.0, 2.5), "exposure change, EV"),
        Distortion("underexposure", (-0.7, -1.3, -2.0, -2.7, -3.5), "exposure change, EV"),
    )
}

_APPLY: dict[str, Callable[[Image.Image, float, np.random.Generator], np.ndarray]] = {
    "gaussian_blur": _blur,
    "gaussian_noise": _noise,
    "jpeg": _jpeg,
    "jpeg2000": _jpeg2000,
    "contrast": _contrast,
    "overexposure": _exposure,
    "underexposure": _exposure,
}


def as_rgb_image(image: Image.Image | np.ndarray) -> Image.Image:
    """A PIL image or a uint8 array (H x W, H x W x 3 or H x W x 4) as an RGB PIL image."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, got {arr.dtype}")
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4)):
        return to_rgb(Image.fromarray(arr))
    raise ValueError(f"expected an H x W, H x W x 3 or H x W x 4 array, got shape {arr.shape}")


def distort(image: Image.Image | np.ndarray, kind: str, level: int, seed: int = 0) -> np.ndarray:
    """Apply one distortion at one level.

    Args:
        image: a PIL image (any mode) or a uint8 array.
        kind: a key of `DISTORTIONS`.
        level: 1 (mild) to 5 (severe).
        seed: seeds the random parts (the noise); the result is a function of (image, kind, level, seed).

    Returns:
        The distorted image, RGB uint8, the input's height and width.
    """
    if kind not in DISTORTIONS:
        raise ValueError(f"unknown distortion {kind!r}; known: {', '.join(DISTORTIONS)}")
    if level not in LEVELS:
        raise ValueError(f"distortion level {level!r}: expected 1 (mild) to 5 (severe)")
    img = as_rgb_image(image)
    param = DISTORTIONS[kind].params[level - 1]
    out = _APPLY[kind](img, param, np.random.default_rng(seed))
    assert out.shape == (img.height, img.width, 3) and out.dtype == np.uint8
    return out
