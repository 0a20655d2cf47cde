"""Builders of small WebDataset shards for tests, including every kind of bad input a corpus has."""

from __future__ import annotations

import csv
import io
import tarfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg(seed: int = 0, size: tuple[int, int] = (48, 40), quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png(mode: str = "RGB", seed: int = 0, size: tuple[int, int] = (40, 32)) -> bytes:
    """PNG in a given PIL mode: RGB, RGBA, P (palette), L (grayscale), I;16 (16-bit gray)."""
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    elif mode == "P":
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert("P")
    elif mode == "L":
        img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
    elif mode == "RGBA":
        img = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    else:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def cmyk_jpeg(seed: int = 0, size: tuple[int, int] = (40, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8), "CMYK")
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


def bomb_png(side: int = 20000) -> bytes:
    """A tiny file that claims `side` x `side` pixels (a decompression bomb)."""
    img = Image.new("1", (side, side))
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def corrupt_jpeg(seed: int = 0) -> bytes:
    data = bytearray(jpeg(seed, size=(64, 64)))
    return bytes(data[: len(data) // 2])  # header intact, entropy-coded data cut


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def write_shard(path, samples: Iterable[tuple[str, dict[str, bytes]]]) -> None:
    """Write `(key, {ext: bytes})` samples in order as a WebDataset tar."""
    with open(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext, data in members.items():
                add(tar, f"{key}.{ext}", data)


def shard_bytes(samples: Iterable[tuple[str, dict[str, bytes]]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext, data in members.items():
                add(tar, f"{key}.{ext}", data)
    return buf.getvalue()


def good_samples(prefix: str, n: int, seed: int = 0) -> list[tuple[str, dict[str, bytes]]]:
    return [
        (f"{prefix}{i:04d}", {"jpg": jpeg(seed * 1000 + i, size=(40 + i % 7, 36 + i % 5)), "txt": b"a caption"})
        for i in range(n)
    ]


def write_corpus(directory, shards: int = 3, per_shard: int = 8) -> list[str]:
    """`shards` good shards `00000.tar`... in `directory`; returns their paths."""
    paths = []
    for s in range(shards):
        path = f"{directory}/{s:05d}.tar"
        write_shard(path, good_samples(f"s{s}_", per_shard, seed=s))
        paths.append(path)
    return paths


def graded_table(d: Path, n: int = 48, seed: int = 0) -> Path:
    """Images whose quality (MOS) is the inverse of their noise level: a relation a model can learn."""
    rng = np.random.default_rng(seed)
    (d / "imgs").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        mos = float(rng.uniform(0, 100))
        base = np.full((40, 40, 3), 120, np.uint8)
        noisy = np.clip(base + rng.normal(0, (100 - mos) * 0.9, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(d / "imgs" / f"{i:03d}.png")
        rows.append((f"imgs/{i:03d}.png", mos))
    with open(d / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "mos"])
        w.writerows(rows)
    return d / "labels.csv"
