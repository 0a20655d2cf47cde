"""JPEG decoding on the scoring device: torchvision's batched decoder (nvJPEG on a GPU) and a resize
there, with PIL on the CPU for whatever the device decoder refuses.

One CPU core decodes a few hundred 512-pixel JPEGs a second with PIL, which caps a fast model (the
student) far below what its GPU can score; nvJPEG decodes tens of thousands. The decoder stage then
only checks each JPEG's header (size, bomb limit, orientation) and passes the bytes on, and the scoring
actor calls `decode_on_device` for them.
"""

from __future__ import annotations

import logging

import numpy as np

from dpiqa.engine.stages.decode import DecodeError, decode_image
from dpiqa.models.preprocessing import Preprocessing

log = logging.getLogger(__name__)


def decode_on_device(blobs: list[bytes], preprocessing: Preprocessing, device):
    """Decode JPEGs on `device` in one batch and resize each to the model's size there.

    Returns:
        `(pixels, statistics, failures)`: uint8 `(N, H, W, 3)` on `device` (zeros where decoding failed),
        float32 `(N, k)` numpy statistics measured before the resize (`preprocessing.statistics`, on the
        device), and `{position: DecodeError}` for the images neither the device decoder nor PIL could decode.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    h, w = preprocessing.size
    out = torch.zeros((len(blobs), h, w, 3), dtype=torch.uint8, device=device)
    statistics = np.zeros((len(blobs), preprocessing.statistics_width), np.float32)
    failures: dict[int, DecodeError] = {}
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    try:
        decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
    except RuntimeError:
        decoded = []
        for t in tensors:  # one bad file fails the whole batch call: retry one by one
            try:
                decoded.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True))
            except RuntimeError:
                decoded.append(None)
    mode = preprocessing.interpolation if preprocessing.interpolation in ("bilinear", "bicubic") else "bilinear"
    luma = torch.tensor([0.299, 0.587, 0.114], device=device).view(3, 1, 1)  # PIL's "L" weights
    for i, chw in enumerate(decoded):
        if chw is None:
            try:  # CMYK, progressive or damaged files the device decoder refuses: PIL on the CPU
                decoded_on_cpu = decode_image(blobs[i], preprocessing)
                out[i] = torch.from_numpy(decoded_on_cpu.pixels).to(device)
                statistics[i] = decoded_on_cpu.statistics
            except DecodeError as exc:
                failures[i] = exc
            continue
        x = chw.unsqueeze(0).float()
        if preprocessing.statistics:  # at the decoded size, before the resize, with PIL's "L" luminance
            statistics[i] = preprocessing.measure((x[0] * luma).sum(0).round())
        if tuple(x.shape[-2:]) != (h, w):
            x = _resize_like_pil(x, h, w, mode, draft=not preprocessing.statistics)
        out[i] = x.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0)
    return out, statistics, failures


def _resize_like_pil(x, h: int, w: int, mode: str, draft: bool):  # torch tensors
    """A float `(1, 3, H, W)` image resized to `(h, w)` as `decode_image` resizes it on the CPU, so that the
    device path scores what the CPU path scores (on the demo corpus's photographs within 1/100 of their
    scores' range: `tests/engine/stages/test_device_decode.py`).

    PIL's `draft` (used by `decode_image` for a model without statistics) decodes a large JPEG at 1/2, 1/4 or
    1/8 scale in the DCT domain, which no device decoder offers: a box average over the same factor stands in
    for it. PIL's resize then runs its horizontal pass, rounds to 8 bits, and runs its vertical pass; torch's
    antialiased filters are PIL's, so the same two passes with the same rounding give PIL's pixels.
    """
    import torch.nn.functional as F

    if draft:
        scale = min(x.shape[-1] // w, x.shape[-2] // h)  # as Pillow's JpegImageFile.draft picks it
        factor = next((s for s in (8, 4, 2) if scale >= s), 1)
        if factor > 1:
            x = F.avg_pool2d(x, factor, ceil_mode=True)
    if x.shape[-1] != w:
        x = F.interpolate(x, size=(x.shape[-2], w), mode=mode, antialias=True, align_corners=False)
        x = x.round().clamp(0, 255)
    if x.shape[-2] != h:
        x = F.interpolate(x, size=(h, w), mode=mode, antialias=True, align_corners=False)
    return x


def pixels_for(
    batch_images: np.ndarray,
    batch_statistics: np.ndarray | None,
    on_device: np.ndarray,
    jpegs: np.ndarray,
    rows: np.ndarray,
    preprocessing: Preprocessing,
    device,
):
    """The model input for `rows` of a batch: CPU-decoded images as they are, deferred JPEGs decoded on
    `device`. Returns `(pixels on device, statistics (numpy; None for a model without), {row: DecodeError})`."""
    import torch

    pixels = torch.as_tensor(np.ascontiguousarray(batch_images[rows])).to(device)
    statistics = None if batch_statistics is None else np.array(batch_statistics[rows], dtype=np.float32)
    deferred = [j for j, r in enumerate(rows) if on_device[r]]
    failures = {}
    if deferred:
        decoded, measured, failed = decode_on_device([jpegs[rows[j]] for j in deferred], preprocessing, device)
        pixels[deferred] = decoded
        if statistics is not None:
            statistics[deferred] = measured
        failures = {int(rows[deferred[k]]): exc for k, exc in failed.items()}
    return pixels, statistics, failures
