"""Ranking across distortion levels of one source: the table reader, group batches, the validation ranking
SRCC and epoch selection, and a ranked distillation end to end on a real local Ray (tiny student)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from corpus import graded_table
from PIL import Image
from tiny_training import tiny_student

from dpiqa.engine.training.data import EpochBatches, rank_id, rank_table_rows
from dpiqa.engine.training.loop import rank_srcc, selection
from dpiqa.models.run_options import RunOptions


def ranking_table(d: Path, sources: int = 6, name: str = "rank.csv", labelled: bool = False) -> Path:
    """Grey squares with noise growing with the level: per source, the reference and levels 1..3 of one
    family (unlabelled; `labelled`: every source's rows labelled), and a labelled row."""
    rng = np.random.default_rng(1)
    (d / "rank").mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(sources):
        for level in range(4):
            img = np.clip(120 + rng.normal(0, 1 + 25 * level, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / "rank" / f"{s}-{level}.png")
            rows.append(
                [
                    f"rank/{s}-{level}.png",
                    f"{90 - 20 * level - s}" if labelled or not s else "",
                    f"{s}/{level}",
                    f"src{s}",
                    "noise",
                    level,
                ]
            )
    path = d / name
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "mos", "name", "group", "family", "level"])
        w.writerows(rows)
    return path


def test_rank_table_rows(tmp_path):
    rows = rank_table_rows(str(ranking_table(tmp_path, sources=2)), mos_scale=100.0)
    assert len(rows) == 8 and rows[0]["path"] == str(tmp_path / "rank" / "0-0.png")
    assert rows[1]["target"] == pytest.approx(0.7) and math.isnan(rows[4]["target"])  # source 1 unlabelled
    assert rows[0]["rank_group"] == rank_id("src0") == rows[3]["rank_group"] != rows[4]["rank_group"]
    assert rows[0]["rank_family"] == 0 and rows[1]["rank_family"] == rank_id("noise") and rows[3]["level"] == 3


def test_group_batches_keep_each_source_together():
    """With a group column the epoch's order permutes groups, a group's rows consecutive (in another order
    per epoch); ungrouped rows (-1) are groups of one."""
    batches = object.__new__(EpochBatches)  # the ordering alone, without Ray blocks
    batches.starts = np.asarray([0, 30])
    batches.groups = np.asarray([i // 5 for i in range(20)] + [-1] * 10, np.int64)
    orders = [batches.order(e, 3) for e in range(3)]
    for order in orders:
        assert sorted(order) == list(range(30))
        g = batches.groups[order]
        for group in range(4):
            where = np.flatnonzero(g == group)
            assert len(where) == 5 and where[-1] - where[0] == 4  # consecutive
    assert not np.array_equal(orders[0], orders[1]) and np.array_equal(orders[0], batches.order(0, 3))
    batches.groups = None
    assert sorted(batches.order(0, 3)) == list(range(30))


def test_rank_srcc_and_selection():
    # One source with blur 1..3 and noise 1..2; the reference scores highest. Blur ranked right (-1), noise
    # backwards among its levels: levels (0, 1, 2) scores (0.9, 0.2, 0.5) -> rho -0.5. Mean -0.75.
    ranked = np.asarray([[5, 0, 0], [5, 1, 1], [5, 1, 2], [5, 1, 3], [5, 2, 1], [5, 2, 2], [-1, 0, 0]])
    pred = np.asarray([0.9, 0.8, 0.7, 0.6, 0.2, 0.5, 0.1])
    assert rank_srcc(pred, ranked) == pytest.approx(-0.75)
    assert rank_srcc(pred, np.full((7, 3), -1)) is None
    assert selection({"val_srcc": 0.5}) == {"val_select": 0.5}
    assert selection({"val_srcc": 0.5, "val_rank_srcc": -0.75}) == {"val_select": pytest.approx(0.625)}
    assert selection({"val_rank_srcc": -0.75}) == {"val_select": pytest.approx(0.75)}
    # a ranking table's labelled references (another labelled set's validation part) join the mean
    assert selection({"val_srcc": 0.5, "val_table_srcc": 0.2, "val_rank_srcc": -0.8}) == {
        "val_select": pytest.approx(0.5)
    }


def test_ranked_distillation_end_to_end(ray_local, tmp_path):
    """A student trained with the ranking loss on a labelled table plus a ranking table (train) and selected
    on a held-out ranking table (val): the card records both tables and the loss, and the validation
    metrics carry the ranking SRCC."""
    from dpiqa.engine.training.run import run_training

    table = graded_table(tmp_path, n=30, seed=5)
    train = ranking_table(tmp_path, 6, "train.csv")
    val = ranking_table(tmp_path / "v", 3, "val.csv", labelled=True)
    out = tmp_path / "student"
    result = run_training(
        tiny_student(
            table, out, epochs=2, extra_train=str(train), extra_val=str(val), rank_weight=1.0, rank_margin=0.05
        )
    )
    card = json.loads((out / "card.json").read_text())["training"]
    assert card["ranking"]["weight"] == 1.0 and card["extra_train"]["rows"] == 24 and card["extra_val"]["rows"] == 12
    assert card["images_per_epoch"] == (21 + 24) // 8 * 8  # the labelled training part plus the table
    assert card["protocol"]["selection"].startswith("best mean of validation SRCC")
    val = result.splits[0]["metrics"]["val"]
    assert -1 <= val["rank_srcc"] <= 1 and "select" in val
    # the table's 3 labelled references (level 0) are a second labelled validation set, and select by it too
    assert -1 <= val["table_srcc"] <= 1 and "table_plcc" in val
    assert val["select"] == pytest.approx(np.mean([val["srcc"], val["table_srcc"], -val["rank_srcc"]]))


def test_output_cache_serves_a_rerun_without_the_model(tmp_path):
    """Backbone features computed once are read back from the disk cache by a new stage (a rerun after a
    kill): equal to the computed ones, without running the backbone; another model's entries are not read."""
    import torch

    from dpiqa.engine.training.data import BackboneFeatures, OutputCache, backbone_identity
    from dpiqa.engine.training.model import ModelSpec

    spec = ModelSpec(
        kind="student", config="dpiqa-student-tiny", pretrained_backbone=False, overrides={"freeze_backbone": True}
    )
    images = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    batch = {"image": images, "target": np.zeros(3)}
    first = BackboneFeatures(spec, 100.0, cache_dir=str(tmp_path))
    first.setup()
    computed = first(batch)["features"]
    again = BackboneFeatures(spec, 100.0, cache_dir=str(tmp_path))
    again.setup()
    again.model.backbone_features = None  # the backbone is not run: calling it would fail
    np.testing.assert_array_equal(again(batch)["features"], computed)
    other = OutputCache(str(tmp_path), "another model")
    assert other.get(OutputCache.key(images[0])) is None
    assert OutputCache.key(images[0]) != OutputCache.key(images[1])

    # Another head over the same frozen backbone reads the same entries; other backbone weights do not.
    head = BackboneFeatures(
        dataclasses.replace(spec, overrides={"freeze_backbone": True, "map_size": 8, "head_hidden": 16}),
        100.0,
        cache_dir=str(tmp_path),
    )
    head.setup()
    head.model.backbone_features = None
    np.testing.assert_array_equal(head(batch)["features"], computed)
    moved = BackboneFeatures(spec, 100.0, cache_dir=str(tmp_path))
    moved.setup()
    with torch.no_grad():
        next(moved.model.backbone.parameters()).add_(1.0)
    assert backbone_identity(moved.model) != backbone_identity(again.model) == backbone_identity(head.model)


def test_cached_teacher_scores_and_maps_come_back_from_disk(tmp_path):
    """The teacher's score and map per image, cached by a first run, are what a rerun gets without loading
    the teacher."""
    import torch

    from dpiqa.engine import schema
    from dpiqa.engine.stages.score import ScoreStage
    from dpiqa.engine.training.data import CachedScores
    from dpiqa.models.student import DPIQAStudent, StudentConfig

    torch.manual_seed(0)
    DPIQAStudent(StudentConfig(backbone="test_efficientnet", map_size=4, head_hidden=8, image_size=32)).save_pretrained(
        str(tmp_path / "teacher")
    )
    images = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)

    def batch():
        status = np.empty(4, dtype=object)
        status[:] = [schema.OK] * 4
        return {"image": images, "status": status, "error": np.full(4, None, dtype=object), "target": np.zeros(4)}

    def stage():
        s = CachedScores(
            ScoreStage(str(tmp_path / "teacher"), RunOptions(device="cpu"), write_maps=True, keep_images=True),
            str(tmp_path / "cache"),
            "tiny teacher",
        )
        s.setup()
        return s

    first = stage()(batch())
    rerun = stage()
    rerun.stage.setup = None  # a fully cached batch never loads the teacher
    second = rerun(batch())
    np.testing.assert_array_equal(first["score"], second["score"])
    assert list(first["map"]) == list(second["map"]) and len(first["map"][0]) == 8 * 4 * 4 * 2  # float16 bytes
    assert set(second) >= {"image", "target", "status", "error", "score", "map"}
