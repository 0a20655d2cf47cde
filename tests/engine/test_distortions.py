"""Synthetic distortions: stronger levels move further from the original, shapes kept, deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from engine.distortions import DISTORTIONS, LEVELS, distort


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    # A real 128 x 144 photograph crop. (Much smaller and JPEG 2000's levels 4 and 5 meet: at 1:128 the
    # codestream is down to its headers.)
    return skimage.data.astronaut()[100:228, 150:294]


def luminance(arr: np.ndarray) -> np.ndarray:
    return arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def test_registry_has_the_kinds_with_five_levels():
    assert list(DISTORTIONS) == ["gaussian_blur", "gaussian_noise", "jpeg", "jpeg2000", "contrast",
                                 "overexposure", "underexposure"]
    assert all(len(d.params) == len(LEVELS) == 5 for d in DISTORTIONS.values())


@pytest.mark.parametrize("kind", list(DISTORTIONS))
def test_psnr_strictly_decreases_with_level(photo, kind):
    psnr = [peak_signal_noise_ratio(photo, distort(photo, kind, level, seed=0)) for level in LEVELS]
    assert all(a > b for a, b in zip(psnr, psnr[1:], strict=False)), psnr
    assert psnr[0] < 60  # level 1 already changes the image


def test_the_intended_statistic_moves_monotonically(photo):
    def stats(kind, fn):
        return [fn(luminance(distort(photo, kind, level))) for level in LEVELS]

    contrast = stats("contrast", np.std)
    assert np.std(luminance(photo)) > contrast[0] and all(np.diff(contrast) < 0)
    over = stats("overexposure", np.mean)
    assert np.mean(luminance(photo)) < over[0] and all(np.diff(over) > 0)
    under = stats("underexposure", np.mean)
    assert np.mean(luminance(photo)) > under[0] and all(np.diff(under) < 0)
    blur_detail = stats("gaussian_blur", lambda y: np.abs(np.diff(y, axis=1)).mean())
    assert all(np.diff(blur_detail) < 0)
    noise_residual = [np.std(distort(photo, "gaussian_noise", lv).astype(float) - photo) for lv in LEVELS]
    assert noise_residual == pytest.approx([4, 8, 14, 24, 40], rel=0.15)  # clipping trims a little


@pytest.mark.parametrize("kind", list(DISTORTIONS))
def test_shape_dtype_and_input_types(photo, kind):
    odd = photo[:50, :70]
    for image in (odd, Image.fromarray(odd), Image.fromarray(odd).convert("L"), Image.fromarray(odd).convert("RGBA"),
                  odd[:, :, 0]):
        out = distort(image, kind, 3)
        assert out.shape == (50, 70, 3) and out.dtype == np.uint8


def test_deterministic_given_the_seed(photo):
    for kind in DISTORTIONS:
        assert np.array_equal(distort(photo, kind, 4, seed=3), distort(photo, kind, 4, seed=3))
    assert not np.array_equal(distort(photo, "gaussian_noise", 4, seed=3), distort(photo, "gaussian_noise", 4, seed=4))
    assert np.array_equal(distort(photo, "jpeg", 4, seed=3), distort(photo, "jpeg", 4, seed=4))


def test_bad_arguments(photo):
    with pytest.raises(ValueError, match="unknown distortion 'motion_blur'; known: gaussian_blur"):
        distort(photo, "motion_blur", 1)
    with pytest.raises(ValueError, match="expected 1 .* to 5"):
        distort(photo, "jpeg", 6)
    with pytest.raises(ValueError, match="uint8"):
        distort(photo.astype(np.float32), "jpeg", 1)
    with pytest.raises(ValueError, match="shape"):
        distort(photo[:, :, :2], "jpeg", 1)
