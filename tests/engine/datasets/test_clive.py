"""CLIVE loader: the MATLAB files in their real structure, the 7 training images dropped, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from corpus import jpeg

from dpiqa.engine.datasets import LayoutError, load_dataset

TRAINING = [f"t{i}.bmp" for i in range(1, 8)]
TEST = ["3.bmp", "100.bmp", "1001.JPG", "22.bmp", "999.bmp"]
MOS = [63.9, 25.3, 48.1, 70.0, 55.5, 41.2, 80.7] + [12.5, 88.25, 50.0, 33.3, 66.6]


def write_clive(root, names=TRAINING + TEST, mos=MOS, names_variable="AllImages_release") -> None:
    """The ChallengeDB_release layout: AllImages_release is an N x 1 cell array of names, AllMOS_release a
    1 x N double array."""
    (root / "Data").mkdir(parents=True)
    (root / "Images" / "trainingImages").mkdir(parents=True)
    cell = np.empty((len(names), 1), dtype=object)
    for i, name in enumerate(names):
        cell[i, 0] = name
    scipy.io.savemat(root / "Data" / "AllImages_release.mat", {names_variable: cell})
    scipy.io.savemat(root / "Data" / "AllMOS_release.mat", {"AllMOS_release": np.asarray([mos], dtype=np.float64)})
    for i, name in enumerate(names):
        folder = root / "Images" / ("trainingImages" if i < 7 else "")
        (folder / name).write_bytes(jpeg(i))


def test_fixture_has_the_published_structure(tmp_path):
    write_clive(tmp_path)
    names = scipy.io.loadmat(tmp_path / "Data" / "AllImages_release.mat")["AllImages_release"]
    mos = scipy.io.loadmat(tmp_path / "Data" / "AllMOS_release.mat")["AllMOS_release"]
    assert names.shape == (12, 1) and names.dtype == object and names[0, 0].tolist() == ["t1.bmp"]
    assert mos.shape == (1, 12) and mos.dtype == np.float64


def test_drops_the_seven_training_images(tmp_path):
    write_clive(tmp_path)
    data = load_dataset("clive", str(tmp_path))
    assert data.names == TEST
    assert data.mos.tolist() == MOS[7:]
    assert data.mos_scale == 100.0
    assert data[0].path == str(tmp_path / "Images" / "3.bmp")


def test_keeps_training_images_when_asked(tmp_path):
    write_clive(tmp_path)
    data = load_dataset("clive", str(tmp_path), drop_training=False)
    assert data.names == TRAINING + TEST
    assert data[0].path == str(tmp_path / "Images" / "trainingImages" / "t1.bmp")
    assert [item.extra["training_image"] for item in data] == [True] * 7 + [False] * 5


def test_count_mismatch_names_both_files(tmp_path):
    write_clive(tmp_path, mos=MOS[:-1])
    with pytest.raises(LayoutError, match=r"AllMOS_release.mat: 11 MOS values for the 12 names in .*AllImages_release"):
        load_dataset("clive", str(tmp_path))


def test_missing_mos_file_is_named(tmp_path):
    write_clive(tmp_path)
    (tmp_path / "Data" / "AllMOS_release.mat").unlink()
    with pytest.raises(
        LayoutError, match=r"Data/AllMOS_release.mat: not found \(a CLIVE root has Data/AllMOS_release.mat\)$"
    ):
        load_dataset("clive", str(tmp_path))


def test_wrong_variable_and_unreadable_file(tmp_path):
    write_clive(tmp_path / "a", names_variable="names")
    with pytest.raises(LayoutError, match=r"AllImages_release.mat: no variable 'AllImages_release' \(has names\)"):
        load_dataset("clive", str(tmp_path / "a"))
    write_clive(tmp_path / "b")
    (tmp_path / "b" / "Data" / "AllImages_release.mat").write_bytes(b"not a mat file")
    with pytest.raises(LayoutError, match="AllImages_release.mat: not a readable MATLAB file"):
        load_dataset("clive", str(tmp_path / "b"))


def test_missing_test_image(tmp_path):
    write_clive(tmp_path)
    (tmp_path / "Images" / "22.bmp").unlink()
    with pytest.raises(LayoutError, match=r"1 of the 5 images it lists are missing \(e.g. .*22.bmp\)"):
        load_dataset("clive", str(tmp_path))
