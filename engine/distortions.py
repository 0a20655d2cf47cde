"""Graded synthetic distortions at 5 levels each: the demo corpus's 7 (blur, noise, JPEG, JPEG 2000, contrast,
exposure; `DISTORTIONS`, unchanged so that the corpus and its figures stay comparable) and more families
used only to train (`EXTRA_DISTORTIONS`: sensor and impulse noise, motion and defocus blur, WebP,
resampling, pixelation, colour saturation and cast, quantisation, median smearing) and the camera and
processing defects users meet (`CAMERA_DISTORTIONS`: chromatic aberration, rolling/banded sensor noise,
oversharpening); `ALL_DISTORTIONS` holds every family."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps, features

from dpiqa.images import as_rgb_image

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


# --- Families used only for training (KADID-10k's list, implemented from their usual definitions) ---


def _sensor_noise(img: Image.Image, gain: float, rng: np.random.Generator) -> np.ndarray:
    # Poisson-Gaussian noise as a camera sensor makes it, in linear light: photon (shot) noise whose
    # variance grows with the signal (`gain` electrons per unit at full scale: fewer = darker scene, more
    # amplification), plus read noise; per pixel and channel (chroma noise included), then back to sRGB-ish
    # gamma 2.2. Dark regions get relatively more noise, unlike `gaussian_noise`.
    linear = (np.asarray(img, dtype=np.float64) / 255.0) ** 2.2
    photons = rng.poisson(linear * gain) / gain
    read = rng.normal(0.0, 2.0 / gain**0.5, linear.shape) * 0.05
    out = np.clip(photons + read, 0.0, 1.0) ** (1 / 2.2)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def _impulse_noise(img: Image.Image, fraction: float, rng: np.random.Generator) -> np.ndarray:
    # Salt and pepper: that fraction of pixels set to black or white (all channels).
    arr = np.asarray(img).copy()
    hit = rng.random(arr.shape[:2]) < fraction
    arr[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0, 255)[:, None].astype(np.uint8)
    return arr


def _convolve(img: Image.Image, kernel: np.ndarray) -> np.ndarray:
    from scipy.ndimage import convolve

    arr = np.asarray(img, dtype=np.float64)
    out = np.stack([convolve(arr[..., c], kernel, mode="reflect") for c in range(3)], axis=-1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def motion_kernel(length: float, angle: float) -> np.ndarray:
    """A normalised line kernel of `length` pixels at `angle` degrees (camera shake along a line)."""
    size = int(np.ceil(length)) | 1
    kernel = np.zeros((size, size))
    c = size // 2
    t = np.linspace(-(length - 1) / 2, (length - 1) / 2, max(2, int(np.ceil(length)) * 4))
    rad = np.deg2rad(angle)
    for x, y in zip(np.rint(c + t * np.cos(rad)).astype(int), np.rint(c - t * np.sin(rad)).astype(int), strict=True):
        kernel[y, x] = 1.0
    return kernel / kernel.sum()


def disc_kernel(radius: float) -> np.ndarray:
    """A normalised disc (an out-of-focus lens's point spread), anti-aliased at its edge."""
    r = int(np.ceil(radius))
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    kernel = np.clip(radius + 0.5 - np.hypot(x, y), 0.0, 1.0)
    return kernel / kernel.sum()


def _motion_blur(img: Image.Image, length: float, rng: np.random.Generator) -> np.ndarray:
    return _convolve(img, motion_kernel(length, float(rng.uniform(0.0, 180.0))))


def _defocus_blur(img: Image.Image, radius: float, rng: np.random.Generator) -> np.ndarray:
    return _convolve(img, disc_kernel(radius))


def _webp(img: Image.Image, quality: float, rng: np.random.Generator) -> np.ndarray:
    if not features.check("webp"):
        raise RuntimeError("this Pillow was built without WebP: install Pillow's wheel for webp")
    return _encode(img, "WEBP", quality=int(quality), method=4)


def _resample(img: Image.Image, factor: float, rng: np.random.Generator) -> np.ndarray:
    # Downscaled (as an upload pipeline or a cheap zoom does) and scaled back up: soft, aliased detail.
    small = img.resize(
        (max(1, round(img.width / factor)), max(1, round(img.height / factor))), Image.Resampling.BILINEAR
    )
    return np.asarray(small.resize(img.size, Image.Resampling.BICUBIC))


def _pixelate(img: Image.Image, factor: float, rng: np.random.Generator) -> np.ndarray:
    small = img.resize((max(1, round(img.width / factor)), max(1, round(img.height / factor))), Image.Resampling.BOX)
    return np.asarray(small.resize(img.size, Image.Resampling.NEAREST))


def _saturation(img: Image.Image, factor: float, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(ImageEnhance.Color(img).enhance(factor))  # 0 = grey, 1 = unchanged, > 1 = garish


def _color_cast(img: Image.Image, strength: float, rng: np.random.Generator) -> np.ndarray:
    # A wrong white balance: per-channel gains along a random hue direction, mean brightness kept.
    direction = rng.normal(size=3)
    direction -= direction.mean()
    direction /= np.linalg.norm(direction) + 1e-12
    gains = 2.0 ** (strength * direction)
    gains /= gains.mean()
    arr = np.asarray(img, dtype=np.float64) * gains
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def _quantize(img: Image.Image, levels: float, rng: np.random.Generator) -> np.ndarray:
    # Colour quantisation: `levels` values per channel (banding in gradients).
    return np.asarray(ImageOps.posterize(img, int(levels)))


def _median(img: Image.Image, size: float, rng: np.random.Generator) -> np.ndarray:
    # The smeared, waxy texture of strong denoising.
    return np.asarray(img.filter(ImageFilter.MedianFilter(int(size))))


EXTRA_DISTORTIONS: dict[str, Distortion] = {
    d.name: d
    for d in (
        Distortion("sensor_noise", (2000.0, 700.0, 250.0, 90.0, 30.0), "full-scale photon count (fewer = noisier)"),
        Distortion("impulse_noise", (0.002, 0.006, 0.015, 0.035, 0.08), "fraction of pixels hit"),
        Distortion("motion_blur", (3.0, 5.0, 9.0, 15.0, 25.0), "line length, pixels"),
        Distortion("defocus_blur", (1.0, 1.8, 3.0, 5.0, 8.0), "disc radius, pixels"),
        Distortion("webp", (40, 20, 10, 5, 1), "WebP quality"),
        Distortion("resample", (1.5, 2.0, 3.0, 4.5, 7.0), "down- then up-scaling factor"),
        Distortion("pixelate", (2.0, 3.0, 5.0, 8.0, 12.0), "block side, pixels"),
        Distortion("desaturation", (0.6, 0.4, 0.25, 0.1, 0.0), "colour factor (1 = unchanged)"),
        Distortion("oversaturation", (1.6, 2.2, 3.0, 4.0, 5.5), "colour factor (1 = unchanged)"),
        Distortion("color_cast", (0.25, 0.45, 0.7, 1.0, 1.4), "white-balance error, stops between channels"),
        Distortion("quantization", (5, 4, 3, 2, 1), "bits per channel"),
        Distortion("median_smear", (3, 5, 7, 9, 13), "median filter side, pixels"),
    )
}


# --- Camera and processing defects users meet (training families; kept apart from EXTRA_DISTORTIONS so that
# recipes/build_ranking_set.py's seeded family draws, and the tables the shipped card records, stay the same) ---


def _chromatic_aberration(img: Image.Image, shift: float, rng: np.random.Generator) -> np.ndarray:
    # Lateral chromatic aberration: the lens magnifies red and blue differently, so their planes are scaled
    # about the image centre against green: red outwards and blue inwards by `shift` pixels at the corners
    # (coloured fringes that grow towards the edges). scipy resamples each plane (cubic; the border's
    # nearest pixel where the inward-scaled plane reads outside the frame).
    from scipy.ndimage import affine_transform

    arr = np.asarray(img, dtype=np.float64)
    centre = (np.asarray(arr.shape[:2], dtype=np.float64) - 1) / 2
    corner = float(np.hypot(*centre)) or 1.0
    out = arr.copy()
    for channel, sign in ((0, 1.0), (2, -1.0)):
        k = 1.0 + sign * shift / corner  # magnification; the transform maps output to input coordinates
        out[..., channel] = affine_transform(
            arr[..., channel], np.full(2, 1 / k), offset=centre - centre / k, order=3, mode="nearest"
        )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _banded_noise(img: Image.Image, sigma: float, rng: np.random.Generator) -> np.ndarray:
    # Rolling / banded sensor noise (a rolling shutter under flickering light, row-wise read-out noise): every
    # row gets an offset drawn with standard deviation `sigma`, and a slow sinusoidal band of the same amplitude
    # rolls down the frame (random period of 8-40 % of the height and phase); the same offset on all channels
    # of a row, plus a third of it as per-pixel noise.
    arr = np.asarray(img, dtype=np.float64)
    h = arr.shape[0]
    rows = rng.normal(0.0, sigma, h)
    period = rng.uniform(0.08, 0.4) * h
    band = sigma * np.sin(2 * np.pi * np.arange(h) / max(period, 1.0) + rng.uniform(0, 2 * np.pi))
    out = arr + (rows + band)[:, None, None] + rng.normal(0.0, sigma / 3, arr.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _oversharpen(img: Image.Image, percent: float, rng: np.random.Generator) -> np.ndarray:
    # Oversharpening as cameras and editors overdo it: an unsharp mask of radius 2 px at `percent` strength,
    # no threshold (halos along edges, amplified grain).
    return np.asarray(img.filter(ImageFilter.UnsharpMask(radius=2, percent=int(percent), threshold=0)))


CAMERA_DISTORTIONS: dict[str, Distortion] = {
    d.name: d
    for d in (
        Distortion("chromatic_aberration", (1.0, 2.0, 3.5, 5.5, 8.0), "red/blue shift at the corners, pixels"),
        Distortion("banded_noise", (2.0, 4.0, 7.0, 11.0, 17.0), "row offset deviation, 0-255 units"),
        Distortion("oversharpen", (150, 300, 500, 800, 1200), "unsharp-mask strength, percent (radius 2 px)"),
    )
}

ALL_DISTORTIONS: dict[str, Distortion] = {**DISTORTIONS, **EXTRA_DISTORTIONS, **CAMERA_DISTORTIONS}

_APPLY.update(
    {
        "sensor_noise": _sensor_noise,
        "impulse_noise": _impulse_noise,
        "motion_blur": _motion_blur,
        "defocus_blur": _defocus_blur,
        "webp": _webp,
        "resample": _resample,
        "pixelate": _pixelate,
        "desaturation": _saturation,
        "oversaturation": _saturation,
        "color_cast": _color_cast,
        "quantization": _quantize,
        "median_smear": _median,
        "chromatic_aberration": _chromatic_aberration,
        "banded_noise": _banded_noise,
        "oversharpen": _oversharpen,
    }
)


def distort(image: Image.Image | np.ndarray, kind: str, level: int, seed: int = 0) -> np.ndarray:
    """Apply one distortion at one level.

    Args:
        image: a PIL image (any mode) or a uint8 array.
        kind: a key of `ALL_DISTORTIONS` (the demo's `DISTORTIONS`, the training-only `EXTRA_DISTORTIONS` or
            `CAMERA_DISTORTIONS`).
        level: 1 (mild) to 5 (severe).
        seed: seeds the random parts (the noise); the result is a function of (image, kind, level, seed).

    Returns:
        The distorted image, RGB uint8, the input's height and width.
    """
    if kind not in ALL_DISTORTIONS:
        raise ValueError(f"unknown distortion {kind!r}; known: {', '.join(ALL_DISTORTIONS)}")
    if level not in LEVELS:
        raise ValueError(f"distortion level {level!r}: expected 1 (mild) to 5 (severe)")
    img = as_rgb_image(image)
    param = ALL_DISTORTIONS[kind].params[level - 1]
    out = _APPLY[kind](img, param, np.random.default_rng(seed))
    assert out.shape == (img.height, img.width, 3) and out.dtype == np.uint8
    return out
