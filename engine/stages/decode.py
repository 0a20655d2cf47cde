"""The decoder: image bytes -> RGB uint8 at the model's input size, each failure captured in its row."""

from __future__ import annotations

import io
import warnings
from typing import ClassVar, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from dpiqa.engine import schema
from dpiqa.engine.stages.base import Batch, Stage, text_column
from dpiqa.images import to_rgb
from dpiqa.models.preprocessing import Preprocessing

# PIL's own bomb guard warns above MAX_IMAGE_PIXELS and raises inside `Image.open` above twice that,
# before the size is known to us. We switch it off and check the header's size against our own limit
# right after `open` (which parses only the header), so a bomb becomes a `too_large` row with the size
# it claims, and no pixel of it is decoded.
Image.MAX_IMAGE_PIXELS = None
DEFAULT_MAX_PIXELS = schema.DEFAULT_MAX_PIXELS

_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


_ORIENTATION = 0x0112
_TRANSPOSING = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class DecodeError(Exception):
    """A sample that cannot become a model input; `status` is one of `dpiqa.engine.schema`'s classes, and
    `size` the `(width, height)` its header claims when it was read."""

    def __init__(self, status: str, message: str, size: tuple[int, int] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.size = size


class Decoded(NamedTuple):
    """One image as the model takes it: uint8 `(H, W, 3)` at `preprocessing.size`, its size as displayed, and
    float32 `(k,)` statistics measured before the resize (`preprocessing.statistics`; empty for most models)."""

    pixels: np.ndarray
    width: int
    height: int
    statistics: np.ndarray


def resize(rgb: Image.Image, preprocessing: Preprocessing, reducing_gap: float | None = None) -> np.ndarray:
    """An RGB image at the model's input size (aspect not kept), uint8 `(H, W, 3)`; `reducing_gap`: PIL's
    integer box reduction first, to within that factor of the size (see `model_input`)."""
    target_h, target_w = preprocessing.size
    if rgb.size != (target_w, target_h):
        rgb = rgb.resize((target_w, target_h), _FILTERS[preprocessing.interpolation], reducing_gap=reducing_gap)
    return np.asarray(rgb, dtype=np.uint8)


# A model that reads statistics measured before the resize gets its JPEGs decoded whole (no `draft`), and a
# whole 12-megapixel photograph resized to 224 costs PIL ~120 ms with the filter alone. PIL's `reducing_gap`
# first reduces by an integer factor (a box average, as the draft decode's DCT-domain downscaling does) to
# within 2x of the size: ~25 ms, and 0.27 grey levels from the exact resize on average (the draft path: 1.5).
# `python bench/decode_statistics.py` measures the whole decoder.
STATISTICS_REDUCING_GAP = 2.0


def model_input(rgb: Image.Image, preprocessing: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image at its own size -> `(pixels at the model's size, statistics measured before the resize)`."""
    if not preprocessing.statistics:
        return resize(rgb, preprocessing), np.zeros(0, np.float32)
    statistics = preprocessing.measure(np.asarray(rgb.convert("L")))
    return resize(rgb, preprocessing, STATISTICS_REDUCING_GAP), statistics


def decode_image(data: bytes | None, preprocessing: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode and resize one image.

    Returns:
        `Decoded(pixels, width, height, statistics)`: uint8 `(H, W, 3)` at `preprocessing.size`, the
        original size, and the statistics `preprocessing` measures before the resize.

    Raises:
        DecodeError: with the row status (`empty_file`, `not_an_image`, `too_large`, `decode_error`).
    """
    if not data:
        raise DecodeError(schema.EMPTY, "zero-byte image member")
    try:
        with warnings.catch_warnings():
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        if _is_heif(data):
            raise DecodeError(
                schema.DECODE_ERROR,
                "a HEIF/HEIC image, which this worker's Pillow cannot decode: "
                "pip install pillow-heif (dpiqa[heif]) on the workers",
            ) from exc
        raise DecodeError(schema.NOT_AN_IMAGE, f"not an image PIL can identify ({len(data)} bytes)") from exc
    except Exception as exc:  # any parser failure is this sample's problem only
        raise DecodeError(schema.DECODE_ERROR, f"{type(exc).__name__}: {exc}") from exc
    width, height = img.size
    if width * height > max_pixels:
        raise DecodeError(schema.TOO_LARGE, f"{width}x{height} has more than {max_pixels} pixels", (width, height))
    target_h, target_w = preprocessing.size
    try:
        orientation = img.getexif().get(_ORIENTATION)
    except Exception:  # a broken EXIF block only loses the orientation
        orientation = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if img.format == "JPEG" and not preprocessing.statistics:
                # DCT-domain downscaling: decode at the smallest 1/2^k scale still >= the target (not for a
                # model that reads the JPEG block grid, which a downscaled decode erases).
                img.draft("RGB", (target_w, target_h))
            img.load()
            pixels, statistics = model_input(to_rgb(img), preprocessing)
    except Exception as exc:  # corrupt pixel data: the header's size is still worth recording
        raise DecodeError(schema.DECODE_ERROR, f"{type(exc).__name__}: {exc}", (width, height)) from exc
    if orientation in _TRANSPOSING:
        width, height = height, width  # report the size as displayed
    return Decoded(pixels, width, height, statistics)


def decode_pixels(
    image: Image.Image | np.ndarray, preprocessing: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Decoded:
    """An image already decoded (a PIL image, or a uint8 array `(H, W)`, `(H, W, 3)`, `(H, W, 4)`, or a
    uint16 `(H, W)` one as a 16-bit PNG gives) -> the model's input, the rest as `decode_image` does after its
    `Image.open`: the bomb limit, EXIF orientation (a PIL image's), alpha over white, 16-bit scaled, the
    statistics measured before the resize. A PIL image is taken at its full resolution (it is already decoded,
    so a JPEG's reduced-scale `draft` decode cannot apply).

    Raises:
        DecodeError: `not_an_image` for an array of another dtype or shape, `too_large`, `decode_error`.
    """
    if not isinstance(image, Image.Image):
        arr = np.asarray(image)
        if arr.dtype == np.uint16 and arr.ndim == 2:  # 16-bit grey, as PIL's I;16 (to_rgb scales it)
            image = Image.fromarray(arr)
        elif arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
            raise DecodeError(
                schema.NOT_AN_IMAGE,
                f"an array of {arr.dtype} {arr.shape} is no image: expected uint8 (H, W), (H, W, 3) or (H, W, 4), "
                "or uint16 (H, W)",
            )
        else:
            image = Image.fromarray(arr)
    width, height = image.size
    if width * height > max_pixels:
        raise DecodeError(schema.TOO_LARGE, f"{width}x{height} has more than {max_pixels} pixels", (width, height))
    try:
        orientation = image.getexif().get(_ORIENTATION)
    except Exception:  # a broken EXIF block only loses the orientation
        orientation = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels, statistics = model_input(to_rgb(image), preprocessing)
    except Exception as exc:  # a lazily opened image whose pixel data is corrupt
        raise DecodeError(schema.DECODE_ERROR, f"{type(exc).__name__}: {exc}", (width, height)) from exc
    if orientation in _TRANSPOSING:
        width, height = height, width
    return Decoded(pixels, width, height, statistics)


_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1")


def _is_heif(data: bytes) -> bool:
    """An ISO media file whose brand is HEIF's (AVIF, also ISO media, is decoded by Pillow itself)."""
    return data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS


try:  # HEIF/HEIC through the optional pillow-heif plugin; without it such images get an explaining row
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:
    pass

JPEG_MAGIC = b"\xff\xd8"


def is_jpeg(data: bytes | None) -> bool:
    return isinstance(data, (bytes, bytearray, memoryview)) and data[:2] == JPEG_MAGIC


def jpeg_header(data: bytes, max_pixels: int) -> tuple[int, int]:
    """`(width, height)` as displayed, from the header alone; raises `DecodeError` like `decode_image`."""
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        orientation = img.getexif().get(0x0112)
    except Exception as exc:  # a header PIL cannot parse is this sample's problem only
        raise DecodeError(schema.DECODE_ERROR, f"{type(exc).__name__}: {exc}") from exc
    if width * height > max_pixels:
        raise DecodeError(schema.TOO_LARGE, f"{width}x{height} has more than {max_pixels} pixels", (width, height))
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


class DecodeStage(Stage):
    """Decodes the `data` column into an `image` column (uint8 `(B, H, W, 3)`) plus `width`/`height`, and
    for a model that reads statistics measured before the resize a `statistics` column (float32 `(B, k)`).
    A `data` entry is image bytes (`decode_image`) or, from the library API (`dpiqa.load_scorer`,
    `dpiqa.ray`), an image already decoded: a PIL image or an array (`decode_pixels`).

    Rows that are already failures, or fail here, keep a zero image and get their status and error;
    control rows pass through untouched.

    With `defer_jpeg`, JPEGs are only checked here (header, size, bomb limit) and handed on as bytes in a
    `jpeg` column, flagged in `on_device`, for the scoring actor to decode on its GPU
    (`dpiqa.engine.stages.device_decode`); other formats are decoded here as always.

    Args:
        preprocessing: the model's input contract (read from its config on the driver).
        max_pixels: images with more pixels are `too_large` rows (decompression bombs).
        defer_jpeg: leave JPEG decoding to the scoring device.
    """

    name: ClassVar[str] = "decode"

    def __init__(
        self,
        preprocessing: Preprocessing,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        num_cpus: float = 1.0,
        defer_jpeg: bool = False,
    ) -> None:
        self.preprocessing = preprocessing
        self.max_pixels = max_pixels
        self.num_cpus = num_cpus
        self.defer_jpeg = defer_jpeg

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["index"])
        h, w = self.preprocessing.size
        images = np.zeros((n, h, w, 3), dtype=np.uint8)
        statistics = np.zeros((n, self.preprocessing.statistics_width), dtype=np.float32)
        widths = np.full(n, -1, dtype=np.int32)
        heights = np.full(n, -1, dtype=np.int32)
        status = text_column(batch["status"])
        error = text_column(batch["error"])
        on_device = np.zeros(n, dtype=bool)
        jpegs = np.empty(n, dtype=object)
        for i in range(n):
            if status[i] != schema.OK:
                continue
            try:
                data = batch["data"][i]
                if self.defer_jpeg and is_jpeg(data):
                    widths[i], heights[i] = jpeg_header(data, self.max_pixels)
                    on_device[i], jpegs[i] = True, data
                    continue
                decode = decode_pixels if isinstance(data, (Image.Image, np.ndarray)) else decode_image
                images[i], widths[i], heights[i], statistics[i] = decode(data, self.preprocessing, self.max_pixels)
            except DecodeError as exc:
                status[i], error[i] = exc.status, f"{batch['ext'][i]}: {exc}"
                if exc.size:
                    widths[i], heights[i] = exc.size
        out = {k: v for k, v in batch.items() if k not in ("data", "ext", "status", "error")}
        out.update(status=status, error=error, width=widths, height=heights, image=images)
        if self.preprocessing.statistics:
            out["statistics"] = statistics
        if self.defer_jpeg:
            out.update(on_device=on_device, jpeg=jpegs)
        return out
