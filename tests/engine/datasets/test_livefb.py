"""LIVE-FB (FLIVE) loader: labels_image.csv with relative names under database/ (or the root)."""

from __future__ import annotations

import pandas as pd
import pytest
from corpus import jpeg

from dpiqa.engine.datasets import LayoutError, load_dataset

NAMES = ["voc_emotic_ava/VOC2008_000123.jpg", "AVA__149.jpg", "blur_dataset/motion0042.jpg"]
MOS = [72.12, 55.0, 18.4]


def write_livefb(root, image_dir="database", columns=("name", "mos", "height", "width", "is_valid")) -> None:
    root.mkdir(parents=True, exist_ok=True)
    values = {
        "name": NAMES,
        "mos": MOS,
        "height": [500, 640, 480],
        "width": [375, 480, 640],
        "is_valid": [False, True, False],
    }
    pd.DataFrame({c: values[c] for c in columns}).to_csv(root / "labels_image.csv", index=False)
    for i, name in enumerate(NAMES):
        path = root / image_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg(i))


def test_reads_relative_names_under_database(tmp_path):
    write_livefb(tmp_path)
    data = load_dataset("livefb", str(tmp_path))
    assert data.names == NAMES
    assert data.mos.tolist() == MOS
    assert data.mos_scale == 100.0
    assert data[0].path == str(tmp_path / "database" / "voc_emotic_ava" / "VOC2008_000123.jpg")
    assert data[1].extra == {"height": 640, "width": 480, "is_valid": True}


def test_images_directly_under_the_root(tmp_path):
    write_livefb(tmp_path, image_dir="")
    data = load_dataset("livefb", str(tmp_path))
    assert data[2].path == str(tmp_path / "blur_dataset" / "motion0042.jpg")
    write_livefb(tmp_path / "b", image_dir="FLIVE")
    assert load_dataset("livefb", str(tmp_path / "b"), image_dir="FLIVE")[1].path == str(
        tmp_path / "b" / "FLIVE" / "AVA__149.jpg"
    )


def test_missing_column_and_missing_image(tmp_path):
    write_livefb(tmp_path, columns=("name", "height"))
    with pytest.raises(LayoutError, match=r"labels_image.csv: missing column\(s\) 'mos' \(has name, height\)"):
        load_dataset("livefb", str(tmp_path))
    write_livefb(tmp_path / "b")
    (tmp_path / "b" / "database" / NAMES[2]).unlink()
    with pytest.raises(LayoutError, match=r"1 of the 3 images it lists are missing \(e.g. .*motion0042.jpg\)"):
        load_dataset("livefb", str(tmp_path / "b"))
