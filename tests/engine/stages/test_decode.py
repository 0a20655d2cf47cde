"""The decoder: every image mode a corpus has becomes RGB at the model size; failures become statuses."""

from __future__ import annotations

import io

import corpus
import numpy as np
import pytest
from PIL import Image

from dpiqa.engine import schema
from dpiqa.engine.stages.decode import DecodeError, DecodeStage, decode_image
from dpiqa.models.preprocessing import Preprocessing

SAME = Preprocessing(size=(32, 40), interpolation="nearest")  # (h, w) equal to the fixtures: no resize


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_rgb_png_is_returned_exactly_with_original_size():
    arr = np.random.default_rng(1).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    pixels, w, h, _ = decode_image(encode(Image.fromarray(arr), "PNG"), SAME)
    assert (w, h) == (40, 32) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, arr)


def test_resize_to_model_size_records_original_size():
    pixels, w, h, _ = decode_image(corpus.jpeg(0, size=(100, 60)), Preprocessing(size=(16, 24)))
    assert pixels.shape == (16, 24, 3) and (w, h) == (100, 60)


def test_alpha_is_composited_over_white():
    rgba = np.zeros((32, 40, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red channel set everywhere
    rgba[:16, :, 3] = 255  # top half opaque, bottom half fully transparent
    pixels, _, _, _ = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), SAME)
    assert pixels[0, 0].tolist() == [200, 0, 0]
    assert pixels[-1, -1].tolist() == [255, 255, 255]


def test_16bit_grayscale_is_scaled_not_clipped():
    gray = np.full((32, 40), 0x8000, dtype=np.uint16)
    gray[0, 0] = 0xFFFF
    pixels, _, _, _ = decode_image(encode(Image.fromarray(gray), "PNG"), SAME)
    assert pixels[1, 1].tolist() == [128, 128, 128]  # PIL's own convert would give 255
    assert pixels[0, 0].tolist() == [255, 255, 255]


def test_palette_grayscale_and_cmyk_become_rgb():
    arr = np.random.default_rng(2).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    pal = Image.fromarray(arr).convert("P")
    pixels, _, _, _ = decode_image(encode(pal, "PNG"), SAME)
    np.testing.assert_array_equal(pixels, np.asarray(pal.convert("RGB")))
    gray = arr[..., 0]
    pixels, _, _, _ = decode_image(encode(Image.fromarray(gray, "L"), "PNG"), SAME)
    np.testing.assert_array_equal(pixels, np.repeat(gray[..., None], 3, axis=2))
    cmyk = Image.new("CMYK", (40, 32), (0, 255, 255, 0))  # no black, full magenta+yellow = red
    pixels, _, _, _ = decode_image(encode(cmyk, "JPEG", quality=100), SAME)
    assert pixels.shape == (32, 40, 3)
    r, g, b = pixels[16, 20].tolist()
    assert r > 230 and g < 25 and b < 25


def test_exif_orientation_is_applied():
    arr = np.zeros((32, 40, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    _, w, h, _ = decode_image(encode(img, "JPEG", exif=exif), Preprocessing(size=(8, 8)))
    assert (w, h) == (32, 40)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", schema.EMPTY),
        (b"just some text, not pixels", schema.NOT_AN_IMAGE),
        (corpus.corrupt_jpeg(), schema.DECODE_ERROR),
        (corpus.bomb_png(20000), schema.TOO_LARGE),
    ],
    ids=["zero-byte", "not-an-image", "corrupt-jpeg", "decompression-bomb"],
)
def test_bad_images_raise_with_their_status(data, status):
    with pytest.raises(DecodeError) as info:
        decode_image(data, Preprocessing(size=(16, 16)))
    assert info.value.status == status and str(info.value)


def test_max_pixels_is_configurable():
    with pytest.raises(DecodeError) as info:
        decode_image(corpus.jpeg(0, size=(100, 100)), Preprocessing(size=(16, 16)), max_pixels=9_999)
    assert info.value.status == schema.TOO_LARGE and "100x100" in str(info.value)


def test_stage_keeps_failures_and_control_rows_in_place():
    n = 4
    batch = {
        "shard": np.array(["s"] * n, dtype=object),
        "index": np.arange(n),
        "key": np.array(["a", "b", "c", None], dtype=object),
        "ext": np.array(["jpg", "jpg", None, None], dtype=object),
        "data": np.array([corpus.jpeg(0), b"", None, None], dtype=object),
        "status": np.array(["ok", "ok", schema.NO_IMAGE, schema.END_OF_SHARD], dtype=object),
        "error": np.array([None, None, "no image member", '{"samples": 3}'], dtype=object),
    }
    out = DecodeStage(Preprocessing(size=(8, 8)))(batch)
    assert set(out) == {"shard", "index", "key", "status", "error", "width", "height", "image"}
    assert list(out["status"]) == ["ok", schema.EMPTY, schema.NO_IMAGE, schema.END_OF_SHARD]
    assert out["error"][1] == "jpg: zero-byte image member" and out["error"][3] == '{"samples": 3}'
    assert out["image"].shape == (4, 8, 8, 3) and out["image"][0].any() and not out["image"][1:].any()
    assert out["width"].tolist() == [48, -1, -1, -1]


def test_avif_decodes_and_heif_without_its_plugin_says_what_to_install():
    from PIL import features

    assert features.check("avif")  # Pillow's wheels carry libavif; the README says AVIF is scored
    buf = io.BytesIO()
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(buf, "AVIF")
    pixels, width, height, _ = decode_image(buf.getvalue(), Preprocessing(size=(8, 8)))
    assert (width, height) == (40, 30) and abs(int(pixels.mean()) - 90) <= 3
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)  # an ISO-media HEIF header
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        with pytest.raises(DecodeError, match="pip install pillow-heif") as exc:
            decode_image(heic, Preprocessing(size=(8, 8)))
        assert exc.value.status == schema.DECODE_ERROR


def test_exif_orientations_6_and_8_are_told_apart():
    """An asymmetric image (white left half): orientation 6 shows it turned clockwise (white on top), 8
    counter-clockwise (white at the bottom); both report the displayed width and height."""
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:, :30] = 255
    img = Image.fromarray(arr)
    seen = {}
    for orientation in (1, 6, 8):
        exif = img.getexif()
        exif[0x0112] = orientation
        pixels, w, h, _ = decode_image(encode(img, "JPEG", exif=exif, quality=95), Preprocessing(size=(60, 60)))
        top, bottom = pixels[:20].mean(), pixels[40:].mean()
        left, right = pixels[:, :20].mean(), pixels[:, 40:].mean()
        seen[orientation] = (w, h, top > 200 > bottom, bottom > 200 > top, left > 200 > right)
    assert seen[1] == (60, 40, False, False, True)
    assert seen[6] == (40, 60, True, False, False)
    assert seen[8] == (40, 60, False, True, False)
