"""A float TIFF as scientific and HDR tools write it (tifffile, values 0..1) decodes to its picture, not to
black (issue 39)."""

from __future__ import annotations

import io

import numpy as np
import tifffile

from dpiqa.engine.stages.decode import decode_image
from dpiqa.models.preprocessing import Preprocessing


def tiff(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr)
    return buf.getvalue()


def test_a_float_tiff_in_0_to_1_is_scaled_from_that_range():
    ramp = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (48, 1))  # dark left, bright right
    decoded = decode_image(tiff(ramp), Preprocessing(size=(64, 48)))
    gray = decoded.pixels[..., 0].astype(float)
    assert (decoded.width, decoded.height) == (64, 48)
    assert gray[:, :4].mean() < 10 and gray[:, -4:].mean() > 245  # the full 0..255 range, not 0..1 of it
    assert abs(gray.mean() - 127.5) < 3


def test_a_float_tiff_in_0_to_255_keeps_its_scale():
    flat = np.full((16, 16), 100.0, dtype=np.float32)
    assert abs(decode_image(tiff(flat), Preprocessing(size=(16, 16))).pixels.mean() - 100) < 1
