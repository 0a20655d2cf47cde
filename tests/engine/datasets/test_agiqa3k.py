"""AGIQA-3K loader: data.csv + images/, MOS on 0-5, grouped by prompt; and the real copy when present."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import AGIQA
from corpus import jpeg

from dpiqa.engine.datasets import LayoutError, load_dataset

ROWS = [
    ("AttnGAN_normal_000.jpg", "statue of a man", "", "", "", 0.9656, 0.22, 0.4089, 0.61),
    ("sd1.5_lowstep_000.jpg", "statue of a man", "old", "", "anime", 2.50, 0.31, 1.75, 0.4),
    ("midjourney_normal_001.jpg", "a tray of sushi", "", "", "", 4.25, 0.11, 3.5, 0.2),
]
COLUMNS = ["name", "prompt", "adj1", "adj2", "style", "mos_quality", "std_quality", "mos_align", "std_align"]


def write_agiqa(root, rows=ROWS, columns=COLUMNS) -> None:
    (root / "images").mkdir(parents=True)
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["mos"] = df["mos_quality"]
    df[list(columns) + (["mos"] if columns == COLUMNS else [])].to_csv(root / "data.csv", index=False)
    for i, row in enumerate(rows):
        (root / "images" / row[0]).write_bytes(jpeg(i))


def test_reads_quality_mos_and_prompt_groups(tmp_path):
    write_agiqa(tmp_path)
    data = load_dataset("agiqa3k", str(tmp_path))
    assert data.names == [r[0] for r in ROWS]
    assert data.mos.tolist() == [r[5] for r in ROWS]
    assert data.mos_scale == 5.0
    assert data.targets.tolist() == pytest.approx([r[5] / 5 for r in ROWS])
    assert data.groups == ["statue of a man", "statue of a man", "a tray of sushi"]
    assert data[1].extra["style"] == "anime" and data[0].extra["adj1"] == ""
    assert data[2].path == str(tmp_path / "images" / "midjourney_normal_001.jpg")


def test_alignment_score_option(tmp_path):
    write_agiqa(tmp_path)
    assert load_dataset("agiqa3k", str(tmp_path), score="mos_align").mos.tolist() == [r[7] for r in ROWS]
    with pytest.raises(ValueError, match="expected one of mos_quality, mos_align"):
        load_dataset("agiqa3k", str(tmp_path), score="mos")


def test_missing_column_and_bad_mos(tmp_path):
    write_agiqa(tmp_path / "a", columns=[c for c in COLUMNS if c != "prompt"])
    with pytest.raises(LayoutError, match=r"data.csv: missing column\(s\) 'prompt'"):
        load_dataset("agiqa3k", str(tmp_path / "a"))
    rows = [ROWS[0], (*ROWS[1][:5], float("nan"), *ROWS[1][6:])]
    write_agiqa(tmp_path / "b", rows=rows)
    with pytest.raises(LayoutError, match=r"data.csv: line 3: MOS is missing or not finite"):
        load_dataset("agiqa3k", str(tmp_path / "b"))


@pytest.mark.agiqa
def test_real_agiqa3k():
    data = load_dataset("agiqa3k", str(AGIQA))  # check_images: every one of the 2,982 files exists
    assert len(data) == 2982
    assert len(set(data.names)) == 2982
    mos = data.mos
    assert 0.0 <= mos.min() < 0.5 and 4.0 < mos.max() <= 5.0
    assert 0.2 < data.targets.mean() < 0.8
    assert 250 <= len(set(data.groups)) <= 400  # about ten images per prompt
