"""KonIQ-10k loader: the published CSV + image folder, picked resolution, clear errors, and S3."""

from __future__ import annotations

import pandas as pd
import pytest
from corpus import jpeg

from dpiqa.engine.datasets import LayoutError, koniq, load_dataset

ROWS = [
    ("10004473376.jpg", 77.38, "training"),
    ("10007357496.jpg", 31.52, "validation"),
    ("10007903636.jpg", 56.09, "test"),
]


def write_koniq(root, folders=("1024x768",), rows=ROWS, drop_columns=()) -> None:
    df = pd.DataFrame(
        {
            "image_name": [r[0] for r in rows],
            **{f"c{k}": [k * 10 + i for i in range(len(rows))] for k in range(1, 6)},
            "c_total": [100 + i for i in range(len(rows))],
            "MOS": [r[1] for r in rows],
            "SD": [0.5 + i for i in range(len(rows))],
            "MOS_zscore": [0.1 * i for i in range(len(rows))],
            "set": [r[2] for r in rows],
        }
    ).drop(columns=list(drop_columns))
    root.mkdir(parents=True, exist_ok=True)
    df.to_csv(root / koniq.LABELS, index=False)
    for folder in folders:
        (root / folder).mkdir()
        for i, r in enumerate(rows):
            (root / folder / r[0]).write_bytes(jpeg(i))


def test_reads_names_mos_and_official_set(tmp_path):
    write_koniq(tmp_path, folders=("512x384",))
    data = load_dataset("koniq", str(tmp_path))
    assert data.names == [r[0] for r in ROWS]
    assert data.mos.tolist() == [r[1] for r in ROWS]
    assert data.mos_scale == 100.0
    assert data.targets.tolist() == pytest.approx([r[1] / 100 for r in ROWS])
    assert [item.extra["set"] for item in data] == ["training", "validation", "test"]
    assert data[1].extra["SD"] == 1.5
    assert data[0].path == str(tmp_path / "512x384" / ROWS[0][0])
    table = data.to_pandas()
    assert list(table.columns[:3]) == ["path", "mos", "name"] and len(table) == 3


def test_resolution_prefers_1024_or_follows_the_option(tmp_path):
    write_koniq(tmp_path, folders=("1024x768", "512x384"))
    assert "/1024x768/" in load_dataset("koniq", str(tmp_path))[0].path
    assert "/512x384/" in load_dataset("koniq", str(tmp_path), resolution="512x384")[0].path
    with pytest.raises(ValueError, match="resolution"):
        load_dataset("koniq", str(tmp_path), resolution="640x480")


def test_missing_label_file_is_named(tmp_path):
    (tmp_path / "1024x768").mkdir()
    with pytest.raises(LayoutError, match="koniq10k_distributions_sets.csv: not found"):
        load_dataset("koniq", str(tmp_path))


def test_missing_column_is_named(tmp_path):
    write_koniq(tmp_path, drop_columns=("MOS",))
    with pytest.raises(LayoutError, match=r"koniq10k_distributions_sets.csv: missing column\(s\) 'MOS'"):
        load_dataset("koniq", str(tmp_path))


def test_missing_image_folder_and_missing_image(tmp_path):
    write_koniq(tmp_path, folders=())
    with pytest.raises(LayoutError, match="no image folder.*1024x768/, 512x384/"):
        load_dataset("koniq", str(tmp_path))
    write_koniq(tmp_path / "b")
    (tmp_path / "b" / "1024x768" / ROWS[1][0]).unlink()
    with pytest.raises(LayoutError, match=r"1 of the 3 images it lists are missing \(e.g. .*10007357496.jpg\)"):
        load_dataset("koniq", str(tmp_path / "b"))
    assert len(load_dataset("koniq", str(tmp_path / "b"), check_images=False)) == 3


def test_non_numeric_mos_names_the_line(tmp_path):
    write_koniq(tmp_path, rows=[ROWS[0], ("x.jpg", "high", "test")])
    with pytest.raises(LayoutError, match=r"line 3: MOS 'high' is not a number"):
        load_dataset("koniq", str(tmp_path), check_images=False)


def test_reads_from_s3(tmp_path, s3):
    import s3fs

    bucket, options = s3
    write_koniq(tmp_path / "koniq")
    fs = s3fs.S3FileSystem(**options)
    fs.put(str(tmp_path / "koniq"), f"{bucket}/koniq", recursive=True)
    data = load_dataset("koniq", f"s3://{bucket}/koniq", storage_options=options)
    assert data.names == [r[0] for r in ROWS]
    assert data[2].path == f"s3://{bucket}/koniq/1024x768/{ROWS[2][0]}"
    fs.rm(f"{bucket}/koniq/1024x768/{ROWS[2][0]}")
    fs.invalidate_cache()
    with pytest.raises(LayoutError, match="1 of the 3 images"):
        load_dataset("koniq", f"s3://{bucket}/koniq", storage_options=options)
