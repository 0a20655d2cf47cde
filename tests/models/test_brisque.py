"""BRISQUE baseline: the numpy-2 workaround, its sign, and clean images scoring better than distorted ones."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.color
import skimage.data
from PIL import Image

from dpiqa.engine.distortions import distort
from dpiqa.models.brisque import QUALITY_OFFSET, brisque_model, brisque_quality, brisque_score, brisque_scores


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skimage.data.astronaut()[64:320, 128:384]  # a real, clean 256 x 256 photograph


def test_the_unpatched_package_fails_on_numpy_2_and_ours_does_not(photo):
    from brisque import BRISQUE

    if int(np.__version__.split(".")[0]) >= 2:
        with pytest.raises(TypeError, match="0-dimensional"):
            BRISQUE(url=False).score(photo)
    features = brisque_model().calculate_brisque_features(skimage.color.rgb2gray(photo))
    assert features.shape == (18,) and features.dtype == np.float64 and np.all(np.isfinite(features))
    assert np.isfinite(brisque_score(photo))


def test_clean_scores_better_than_heavy_blur_and_noise(photo):
    clean, blurred, noisy = brisque_scores(
        [photo, distort(photo, "gaussian_blur", 5), distort(photo, "gaussian_noise", 5)]
    )
    assert clean < blurred - 10 and clean < noisy - 10  # lower BRISQUE = better
    quality = brisque_quality([photo, distort(photo, "gaussian_blur", 5)])
    assert quality == pytest.approx(QUALITY_OFFSET - np.array([clean, blurred]))
    assert quality[0] > quality[1]  # quality-oriented: higher = better


def test_paths_and_pil_images_score_like_arrays(photo, tmp_path):
    Image.fromarray(photo).save(tmp_path / "photo.png")
    scores = brisque_scores([photo, Image.fromarray(photo), str(tmp_path / "photo.png")])
    assert scores[0] == pytest.approx(scores[1]) and scores[0] == pytest.approx(scores[2])


def test_a_flat_image_is_undefined_not_a_number(caplog):
    black = np.zeros((64, 64, 3), dtype=np.uint8)
    assert np.isnan(brisque_score(black))
    assert "BRISQUE is undefined for an image" in caplog.text


@pytest.mark.parametrize("kind", ["reference", "gaussian_noise", "jpeg", "gaussian_blur"])
def test_the_shortened_score_is_the_packages_to_the_last_bit(photo, kind):
    """Our `score` leaves out a pass whose results the package discards; every score stays the package's own
    `score` (run here on our numpy-2 feature fix), flat JPEG blocks included, to the 1e-12 by which the
    package's score of one image varies from call to call."""
    from brisque import BRISQUE

    model = brisque_model()
    image = photo if kind == "reference" else distort(photo, kind, 3)
    flat = np.zeros((96, 80, 3), np.uint8)
    flat[20:60, 10:50] = 200  # large flat areas: coefficients of exactly 0 around the edges' blur
    for im in (image, image[:201, :179], flat):
        with np.errstate(invalid="ignore", divide="ignore"):
            ours, theirs = model.score(im), BRISQUE.score(model, im)
            assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-9) or np.isnan(ours) and np.isnan(theirs)
