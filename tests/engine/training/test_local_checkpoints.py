"""`LocalCheckpoints`: what an in-process training run keeps on storage, resumes from and picks the best of."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dpiqa.engine.training.local import LocalCheckpoints


def _epoch(tmp_path: Path, epoch: int) -> Path:
    d = tmp_path / f"src-{epoch}"
    (d / "model").mkdir(parents=True)
    (d / "model" / "weights.bin").write_bytes(bytes([epoch]) * 100)
    (d / "training_state.json").write_text(f'{{"epoch": {epoch}}}')
    return d


def _fill(checkpoints: LocalCheckpoints, tmp_path: Path, scores: list[float]) -> None:
    for epoch, score in enumerate(scores):
        checkpoints.add(_epoch(tmp_path, epoch), {"epoch": epoch, "val_select": score, "history": [epoch]})


def _read(checkpoint, name: str) -> bytes:  # ray.train.Checkpoint
    with checkpoint.as_directory() as d:
        return (Path(d) / name).read_bytes()


def test_keeps_the_best_two_and_the_latest_and_resumes_from_the_latest(tmp_path):
    store = LocalCheckpoints(str(tmp_path / "run" / "local"), keep=2, score="val_select")
    # epoch 2's score is not a number (an untrained model's constant predictions): never among the best
    _fill(store, tmp_path, [0.1, 0.5, math.nan, 0.4, 0.2])
    assert [m["epoch"] for _, m in store.entries()] == [1, 3, 4]  # best 0.5 and 0.4, and the latest
    assert sorted(p.name for p in (tmp_path / "run" / "local").iterdir()) == [
        "epoch-000001",
        "epoch-000003",
        "epoch-000004",
    ]
    latest = store.latest()
    assert _read(latest, "model/weights.bin") == bytes([4]) * 100
    assert _read(latest, "training_state.json") == b'{"epoch": 4}'
    kept = store.best()
    assert [m["val_select"] for _, m in kept] == [0.5, 0.4, 0.2] and kept[0][1]["history"] == [1]
    assert _read(kept[0][0], "model/weights.bin") == bytes([1]) * 100


def test_a_folder_cut_short_is_not_resumed_from(tmp_path):
    """A kill while an epoch's folder was copied leaves it without `metrics.json`: the run resumes from the
    epoch before, and that epoch's rerun replaces the half-written folder."""
    store = LocalCheckpoints(str(tmp_path / "local"), score="val_select")
    _fill(store, tmp_path, [0.1, 0.2])
    half = tmp_path / "local" / "epoch-000002" / "model"
    half.mkdir(parents=True)
    (half / "weights.bin").write_bytes(b"trunc")
    assert _read(store.latest(), "model/weights.bin") == bytes([1]) * 100
    store.add(_epoch(tmp_path, 2), {"epoch": 2, "val_select": 0.3})
    assert _read(store.latest(), "model/weights.bin") == bytes([2]) * 100


def test_without_a_score_the_latest_are_kept(tmp_path):
    store = LocalCheckpoints(str(tmp_path / "local"), keep=2)
    _fill(store, tmp_path, [0.9, 0.1, 0.2, 0.3])
    assert [m["epoch"] for _, m in store.entries()] == [2, 3]
    assert LocalCheckpoints(str(tmp_path / "nothing")).latest() is None


def test_on_s3(tmp_path, s3):
    bucket, options = s3
    store = LocalCheckpoints(f"s3://{bucket}/run/_train/x/local", storage_options=options, score="val_select")
    _fill(store, tmp_path, [0.3, 0.1, 0.2])
    assert [m["epoch"] for _, m in store.entries()] == [0, 2]
    assert _read(store.latest(), "model/weights.bin") == bytes([2]) * 100
    best = max(store.best(), key=lambda cm: cm[1]["val_select"])
    assert best[1]["epoch"] == 0 and _read(best[0], "training_state.json") == b'{"epoch": 0}'


@pytest.mark.parametrize("keep", [1, 3])
def test_keep_counts_besides_the_latest(tmp_path, keep):
    store = LocalCheckpoints(str(tmp_path / "local"), keep=keep, score="val_select")
    _fill(store, tmp_path, [0.5, 0.4, 0.3, 0.2, 0.1])
    assert [m["epoch"] for _, m in store.entries()] == list(range(keep)) + [4]
