"""The dataset registry: every layout declares its MOS scale; options are checked by name."""

from __future__ import annotations

import pytest

from dpiqa.engine.datasets import DATASETS, load_dataset


def test_registry_names_and_scales():
    assert set(DATASETS) == {"koniq", "clive", "spaq", "livefb", "agiqa3k", "csv", "webdataset"}
    assert {n: DATASETS[n].mos_scale for n in ("koniq", "clive", "spaq", "livefb", "agiqa3k")} == {
        "koniq": 100.0,
        "clive": 100.0,
        "spaq": 100.0,
        "livefb": 100.0,
        "agiqa3k": 5.0,
    }
    # the generic layouts take their scale as an option instead
    assert DATASETS["csv"].mos_scale is None and "mos_scale" in DATASETS["csv"].options()
    assert DATASETS["webdataset"].mos_scale is None and "mos_scale" in DATASETS["webdataset"].options()


def test_unknown_dataset_and_option(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'kadid'; known: koniq, clive"):
        load_dataset("kadid", str(tmp_path))
    with pytest.raises(ValueError, match=r"dataset 'koniq': unknown option\(s\) resolutoin \(options: resolution,"):
        load_dataset("koniq", str(tmp_path), resolutoin="512x384")
