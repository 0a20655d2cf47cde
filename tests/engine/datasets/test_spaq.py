"""SPAQ loader: the published .xlsx (first column the name, MOS, attributes) and TestImage/."""

from __future__ import annotations

import pandas as pd
import pytest
from corpus import jpeg

from dpiqa.engine.datasets import LayoutError, load_dataset, spaq

NAMES = ["00001.jpg", "00002.jpg", "10125.jpg"]
MOS = [42.0, 7.75, 91.2]


def write_spaq(
    root, columns=("Image name", "MOS", "Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness")
) -> None:
    root.mkdir(parents=True, exist_ok=True)
    values = {"Image name": NAMES, "MOS": MOS}
    for k, column in enumerate(columns[2:]):
        values[column] = [10.0 * k + i for i in range(len(NAMES))]
    pd.DataFrame({c: values.get(c, [1.0, 2.0, 3.0]) for c in columns}).to_excel(
        root / spaq.LABELS, index=False, engine="openpyxl"
    )
    (root / "TestImage").mkdir()
    for i, name in enumerate(NAMES):
        (root / "TestImage" / name).write_bytes(jpeg(i))


def test_reads_names_mos_and_attributes(tmp_path):
    write_spaq(tmp_path)
    data = load_dataset("spaq", str(tmp_path))
    assert data.names == NAMES
    assert data.mos.tolist() == MOS
    assert data.mos_scale == 100.0
    assert data[2].path == str(tmp_path / "TestImage" / "10125.jpg")
    assert data[1].extra == {
        "Brightness": 1.0,
        "Colorfulness": 11.0,
        "Contrast": 21.0,
        "Noisiness": 31.0,
        "Sharpness": 41.0,
    }


def test_first_column_is_the_name_whatever_its_header(tmp_path):
    write_spaq(tmp_path, columns=("Image name", "MOS"))
    df = pd.read_excel(tmp_path / spaq.LABELS).rename(columns={"Image name": "image"})
    df.to_excel(tmp_path / spaq.LABELS, index=False)
    assert load_dataset("spaq", str(tmp_path)).names == NAMES


def test_missing_mos_column_is_named(tmp_path):
    write_spaq(tmp_path, columns=("Image name", "Score", "Brightness"))
    with pytest.raises(LayoutError, match=r"MOS and Image attribute scores.xlsx: missing column 'MOS' \(has Image"):
        load_dataset("spaq", str(tmp_path))


def test_not_a_spreadsheet(tmp_path):
    write_spaq(tmp_path)
    (tmp_path / spaq.LABELS).write_text("Image name,MOS\n00001.jpg,42\n")
    with pytest.raises(LayoutError, match="scores.xlsx: not a readable .xlsx spreadsheet"):
        load_dataset("spaq", str(tmp_path))


def test_missing_spreadsheet_and_image(tmp_path):
    write_spaq(tmp_path)
    (tmp_path / "TestImage" / "00002.jpg").unlink()
    with pytest.raises(LayoutError, match=r"1 of the 3 images it lists are missing \(e.g. .*00002.jpg\)"):
        load_dataset("spaq", str(tmp_path))
    (tmp_path / spaq.LABELS).unlink()
    with pytest.raises(LayoutError, match="MOS and Image attribute scores.xlsx: not found"):
        load_dataset("spaq", str(tmp_path))
