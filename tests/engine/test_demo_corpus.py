"""The demo corpus's shards: every family (motion blur included) at every level, and a shard built before a family
joined the corpus is rebuilt rather than scored as if it were complete."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from dpiqa.engine import demo


def tiny_photo() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)


def shard_keys(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return sorted(m.name[: -len(".png")] for m in tar.getmembers() if m.name.endswith(".png"))


def test_corpus_holds_motion_blur_and_rebuilds_a_stale_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # one small photograph instead of the 15 (the shard logic is per photograph)
    monkeypatch.setattr(demo, "PHOTOGRAPHS", [("test", "tiny", tiny_photo)])
    stale = tmp_path / "test" / "tiny.tar"
    stale.parent.mkdir(parents=True)
    with tarfile.open(stale, "w") as tar:  # the corpus before motion blur: 1 + 7 x 5 images
        for key in ["tiny/reference", *(f"tiny/{k}-{lv}" for k in demo.DISTORTIONS for lv in demo.LEVELS)]:
            data = b"not a png"
            info = tarfile.TarInfo(f"{key}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    (path,) = demo.build_corpus(tmp_path)
    keys = shard_keys(path)
    assert len(keys) == 1 + 8 * 5 == demo.IMAGES_PER_PHOTOGRAPH
    assert [k for k in keys if "motion_blur" in k] == [f"tiny/motion_blur-{lv}" for lv in range(1, 6)]
    with tarfile.open(path) as tar:
        meta = json.loads(tar.extractfile("tiny/motion_blur-4.json").read())
        assert meta == {"source": "test", "reference": "tiny", "distortion": "motion_blur", "level": 4}
        assert tar.extractfile("tiny/jpeg-1.png").read().startswith(b"\x89PNG")  # rebuilt, not the stale bytes

    mtime = path.stat().st_mtime_ns
    assert demo.build_corpus(tmp_path) == [path] and path.stat().st_mtime_ns == mtime  # a complete shard is kept


def test_the_ranking_covers_motion_blur():
    """`distortion_ranking` reads the corpus's families: motion blur ranked like the others (scores that fall
    with the level give -1; that rise give +1)."""
    rows = [{"key": "p/reference", "score": 5.0}]
    for kind in demo.FAMILIES:
        sign = 1 if kind == "motion_blur" else -1
        rows += [{"key": f"p/{kind}-{lv}", "score": 5.0 + sign * 0.1 * lv} for lv in demo.LEVELS]
    ranking = demo.distortion_ranking(rows)
    assert list(ranking["per_distortion"]) == list(demo.FAMILIES)
    assert ranking["per_distortion"]["motion_blur"]["srcc_level_vs_score"] == pytest.approx(1.0)
    assert ranking["per_distortion"]["jpeg"]["srcc_level_vs_score"] == pytest.approx(-1.0)
    assert ranking["overall_srcc"] == pytest.approx((7 * -1.0 + 1.0) / 8)
