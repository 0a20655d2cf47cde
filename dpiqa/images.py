"""Image conversion shared by the engine's decoder, the distortions and the BRISQUE baseline: any PIL image
(or uint8 array) as 8-bit RGB, orientation applied."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: alpha composited over white, 16-bit gray scaled (PIL would clip it), a
    float image whose values lie in 0..1 scaled from that range, palette and CMYK converted by PIL, EXIF
    orientation applied."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block only loses the orientation
        pass
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.uint16) >> 8
        img = Image.fromarray(arr.astype(np.uint8), "L")
    elif img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = arr[np.isfinite(arr)].max(initial=0)
        # a float image (TIFF from scientific and HDR tools) holds 0..1 as a rule: taken as 0..255 it is black
        top = 1.0 if img.mode == "F" and peak <= 1.0 else 65535.0 if peak > 255 else 255.0
        arr = np.nan_to_num(arr, nan=0.0, posinf=top, neginf=0.0)
        img = Image.fromarray(np.round(np.clip(arr, 0, top) * (255.0 / top)).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


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
