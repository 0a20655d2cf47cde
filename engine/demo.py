"""The embedded demo corpus: photographs that installed packages ship, each with graded distortions, as
WebDataset shards; and the summary of how a model's scores rank those distortions."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from dpiqa.engine.distortions import DISTORTIONS, distort

log = logging.getLogger(__name__)

LEVELS = (1, 2, 3, 4, 5)
MAX_SIDE = 512
# The corpus's families: the 7 classic ones and motion blur (a line kernel at a random angle per level, the
# camera shake users meet; `dpiqa.engine.distortions.EXTRA_DISTORTIONS["motion_blur"]`).
FAMILIES: tuple[str, ...] = (*DISTORTIONS, "motion_blur")
IMAGES_PER_PHOTOGRAPH = 1 + len(FAMILIES) * len(LEVELS)


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        image = getattr(data, name)()
        return image[0] if isinstance(image, tuple) else image  # stereo pairs: the left view

    return load


def _sklearn(index: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_images

        return load_sample_images().images[index]

    return load


def _matplotlib(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from matplotlib import cbook

        with cbook.get_sample_data(name) as f:
            return np.asarray(Image.open(f).convert("RGB"))

    return load


# Real photographs bundled with installed packages (no download): (source, name, loader).
PHOTOGRAPHS: list[tuple[str, str, Callable[[], np.ndarray]]] = [
    *[
        ("scikit-image", n, _skimage(n))
        for n in (
            "astronaut",
            "camera",
            "chelsea",
            "coffee",
            "rocket",
            "hubble_deep_field",
            "immunohistochemistry",
            "moon",
            "stereo_motorcycle",
            "retina",
            "coins",
            "clock",
        )
    ],
    ("scikit-learn", "china", _sklearn(0)),
    ("scikit-learn", "flower", _sklearn(1)),
    ("matplotlib", "grace_hopper", _matplotlib("grace_hopper.jpg")),
]


def reference(loader: Callable[[], np.ndarray]) -> Image.Image:
    """A photograph as RGB, its longer side at most 512 pixels."""
    arr = loader()
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    img = Image.fromarray(arr).convert("RGB")
    scale = MAX_SIDE / max(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    return img


def samples(source: str, name: str, img: Image.Image) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The reference and each distortion at each level; lossless PNG so that only the distortion changes
    the pixels."""

    def png(image: Image.Image | np.ndarray) -> bytes:
        buf = io.BytesIO()
        # zlib level 1: the pixels are the same at any level, the files ~10% larger, and the corpus (540 images,
        # the first thing a new user waits for) builds ~3x faster than at Pillow's default level 6
        (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, "PNG", compress_level=1)
        return buf.getvalue()

    def meta(kind: str, level: int) -> bytes:
        return json.dumps({"source": source, "reference": name, "distortion": kind, "level": level}).encode()

    yield f"{name}/reference", {"png": png(img), "json": meta("none", 0), "txt": name.encode()}
    for kind in FAMILIES:
        for level in LEVELS:
            pixels = distort(img, kind, level, seed=level)
            yield f"{name}/{kind}-{level}", {"png": png(pixels), "json": meta(kind, level), "txt": name.encode()}


def build_corpus(directory: str | Path, photographs: int | None = None) -> list[Path]:
    """One shard per photograph, in a folder per source package (`DIR/scikit-image/astronaut.tar`, ...);
    `photographs`: only the first N (a benchmark's smoke run)."""
    directory = Path(directory)
    shards = []
    for source, name, loader in PHOTOGRAPHS[:photographs]:
        path = directory / source / f"{name}.tar"
        if path.exists() and _complete(path):
            shards.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tar.partial")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, members in samples(source, name, reference(loader)):
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime = len(data), 0
                    tar.addfile(info, io.BytesIO(data))
        tmp.rename(path)  # a shard that exists is complete: a rerun after a kill rebuilds only the rest
        shards.append(path)
        log.info("demo corpus: %s/%s (%d images)", source, name, IMAGES_PER_PHOTOGRAPH)
    return shards


def _complete(path: Path) -> bool:
    """Whether a shard holds this corpus's images: one built before a family joined the corpus (or cut short)
    is rebuilt, not scored as if it were the whole corpus."""
    try:
        with tarfile.open(path) as tar:
            return sum(m.name.endswith(".png") for m in tar.getmembers()) == IMAGES_PER_PHOTOGRAPH
    except (OSError, tarfile.TarError):
        return False


def ranking_of_scores(scores: str) -> dict:
    """`distortion_ranking` of a scored run: the key and score of every shard at `scores` (the output of
    `dpiqa score` over the demo corpus) that has a completion marker, compacted or not."""
    from dpiqa.engine.scores import ScoredRun

    rows = []
    for _, batch in ScoredRun(scores).batches(["key", "score"]):
        rows += batch.to_pylist()
    return distortion_ranking(rows)


def distortion_ranking(rows: list[dict]) -> dict:
    """How well scores rank each photograph's distortions by strength.

    Args:
        rows: `key` (`NAME/KIND-LEVEL` or `NAME/reference`) and `score` of each scored image.

    Returns:
        Per distortion kind: the mean over photographs of Spearman's rho between the level (0 for the
        reference, 1..5) and the score (a good quality model gives about -1), each photograph's rho (None
        where the scores do not change with the level) and the mean score per level; plus `overall`, the
        mean rho over every (photograph, kind).
    """
    from scipy.stats import spearmanr

    by = defaultdict(dict)  # (photo, kind) -> level -> score
    refs = {}
    for r in rows:
        if r["score"] is None or "/" not in (r["key"] or ""):
            continue
        photo, tag = r["key"].split("/", 1)
        if tag == "reference":
            refs[photo] = r["score"]
            continue
        kind, level = tag.rsplit("-", 1)
        by[(photo, kind)][int(level)] = r["score"]
    per_kind: dict[str, dict] = {}
    rhos_all = []
    for kind in FAMILIES:
        rhos, means, by_photo = [], defaultdict(list), {}
        for (photo, k), levels in by.items():
            if k != kind or photo not in refs:
                continue
            xs = [0, *sorted(levels)]
            ys = [refs[photo], *(levels[lv] for lv in sorted(levels))]
            rho = spearmanr(xs, ys).statistic
            by_photo[photo] = float(rho) if np.isfinite(rho) else None
            if np.isfinite(rho):
                rhos.append(rho)
            for x, y in zip(xs, ys, strict=True):
                means[x].append(y)
        if rhos:
            per_kind[kind] = {
                "srcc_level_vs_score": float(np.mean(rhos)),
                "photographs": len(rhos),
                "srcc_by_photograph": dict(sorted(by_photo.items())),
                "mean_score_by_level": {str(lv): float(np.mean(v)) for lv, v in sorted(means.items())},
            }
            rhos_all += rhos
    return {"per_distortion": per_kind, "overall_srcc": float(np.mean(rhos_all)) if rhos_all else None}
