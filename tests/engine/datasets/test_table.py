"""Generic label tables: CSV/TSV/Parquet, relative paths and URLs, configurable columns, clear errors."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from corpus import jpeg

from dpiqa.engine.datasets import LayoutError, load_dataset


def test_csv_resolves_relative_paths_and_keeps_urls(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(jpeg(0))
    pd.DataFrame(
        {"path": ["img/a.jpg", "s3://bucket/b.png", "/abs/c.jpg"], "mos": [3.5, 1.0, 4.75], "source": ["x", "y", "z"]}
    ).to_csv(tmp_path / "labels.csv", index=False)
    data = load_dataset("csv", str(tmp_path / "labels.csv"), mos_scale=5)
    assert [i.path for i in data] == [str(tmp_path / "img" / "a.jpg"), "s3://bucket/b.png", "/abs/c.jpg"]
    assert data.names == ["img/a.jpg", "s3://bucket/b.png", "/abs/c.jpg"]
    assert data.mos.tolist() == [3.5, 1.0, 4.75] and data.mos_scale == 5.0
    assert data[1].extra == {"source": "y"}
    assert data.groups is None
    other = load_dataset("csv", str(tmp_path / "labels.csv"), image_root="s3://b/root")
    assert other[0].path == "s3://b/root/img/a.jpg"


def test_parquet_with_configured_columns(tmp_path):
    pd.DataFrame(
        {
            "url": ["https://h/1.jpg", "https://h/2.jpg", "https://h/3.jpg"],
            "score": [10.0, 20.0, 30.0],
            "id": ["one", "two", "three"],
            "scene": ["s1", None, "s1"],
        }
    ).to_parquet(tmp_path / "t.parquet")
    data = load_dataset(
        "csv",
        str(tmp_path / "t.parquet"),
        path_column="url",
        mos_column="score",
        name_column="id",
        group_column="scene",
    )
    assert data.names == ["one", "two", "three"]
    assert data.mos.tolist() == [10.0, 20.0, 30.0]
    assert [i.group for i in data] == ["s1", None, "s1"]
    assert data.groups == ["s1", "two", "s1"]  # an image without a group is its own group


def test_tsv(tmp_path):
    (tmp_path / "t.tsv").write_text("path\tmos\na.jpg\t1.5\n")
    assert load_dataset("csv", str(tmp_path / "t.tsv")).mos.tolist() == [1.5]


def test_errors_name_the_file_and_row(tmp_path):
    table = tmp_path / "labels.csv"
    pd.DataFrame({"file": ["a.jpg"], "mos": [1.0]}).to_csv(table, index=False)
    with pytest.raises(LayoutError, match=r"labels.csv: missing column\(s\) 'path' \(has file, mos\)"):
        load_dataset("csv", str(table))
    pd.DataFrame({"path": ["a.jpg", "b.jpg"], "mos": [1.0, math.inf]}).to_csv(table, index=False)
    with pytest.raises(LayoutError, match=r"labels.csv: line 3: MOS is missing or not finite \(inf\)"):
        load_dataset("csv", str(table))
    pd.DataFrame({"path": ["a.jpg", "a.jpg"], "mos": [1.0, 2.0]}).to_csv(table, index=False)
    with pytest.raises(LayoutError, match="image name 'a.jpg' appears twice"):
        load_dataset("csv", str(table))
    table.write_text("path,mos\n")
    with pytest.raises(LayoutError, match="labels.csv: no rows"):
        load_dataset("csv", str(table))
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(LayoutError, match="bad.parquet: not a readable table"):
        load_dataset("csv", str(tmp_path / "bad.parquet"))
    with pytest.raises(LayoutError, match="missing.csv: not found"):
        load_dataset("csv", str(tmp_path / "missing.csv"))


def test_check_images(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg(0))
    pd.DataFrame({"path": ["a.jpg", "b.jpg"], "mos": [1.0, 2.0]}).to_csv(tmp_path / "l.csv", index=False)
    assert len(load_dataset("csv", str(tmp_path / "l.csv"))) == 2  # not checked by default
    with pytest.raises(LayoutError, match=r"l.csv: 1 of the 2 images it lists are missing \(e.g. .*b.jpg\)"):
        load_dataset("csv", str(tmp_path / "l.csv"), check_images=True)


def test_reads_a_table_from_s3(tmp_path, s3):
    import s3fs

    bucket, options = s3
    pd.DataFrame({"path": ["x/1.jpg"], "mos": [61.0]}).to_csv(tmp_path / "l.csv", index=False)
    fs = s3fs.S3FileSystem(**options)
    fs.put(str(tmp_path / "l.csv"), f"{bucket}/sets/l.csv")
    fs.pipe(f"{bucket}/sets/x/1.jpg", jpeg(1))
    data = load_dataset("csv", f"s3://{bucket}/sets/l.csv", storage_options=options, check_images=True)
    assert data[0].path == f"s3://{bucket}/sets/x/1.jpg" and data.mos.tolist() == [61.0]


def test_a_mos_outside_the_declared_scale_is_reported(tmp_path, caplog):
    pd.DataFrame({"path": [f"{i}.jpg" for i in range(12)], "mos": [1 + i / 3 for i in range(12)]}).to_csv(
        tmp_path / "l.csv", index=False
    )
    load_dataset("csv", str(tmp_path / "l.csv"), mos_scale=100)
    assert "every MOS is at most 4.66667, a tenth of the declared scale 100" in caplog.text
    caplog.clear()
    load_dataset("csv", str(tmp_path / "l.csv"), mos_scale=4)
    assert "MOS from 1 to 4.66667 lies outside [0, 4]" in caplog.text
    caplog.clear()
    load_dataset("csv", str(tmp_path / "l.csv"), mos_scale=5)
    assert "MOS" not in caplog.text
