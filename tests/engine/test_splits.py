"""Seeded splits: sizes, disjointness, determinism, seed dependence and grouping."""

from __future__ import annotations

import numpy as np
import pytest

from dpiqa.engine.splits import SplitConfig, make_split, make_splits, part_sizes

IDS = [f"img_{i:04d}.jpg" for i in range(1000)]


def as_names(split, ids):
    return {name: {ids[i] for i in split.part(name)} for name in ("train", "val", "test")}


def test_sizes_follow_the_fractions():
    split = make_split(IDS, seed=0)
    assert split.sizes() == {"train": 700, "val": 100, "test": 200}
    assert make_split(IDS[:10], seed=0).sizes() == {"train": 7, "val": 1, "test": 2}
    assert part_sizes(2982, (0.7, 0.1, 0.2)) == (2088, 298, 596)
    assert make_split(IDS, seed=0, fractions=(0.8, 0.0, 0.2)).sizes() == {"train": 800, "val": 0, "test": 200}


def test_parts_are_disjoint_and_cover_everything():
    for split in make_splits(IDS, SplitConfig(n_splits=4)):
        train, val, test = (set(split.part(p).tolist()) for p in ("train", "val", "test"))
        assert not (train & val) and not (train & test) and not (val & test)
        assert train | val | test == set(range(len(IDS)))
        assert split.part("all").tolist() == list(range(len(IDS)))
        assert all(np.all(np.diff(split.part(p)) > 0) for p in ("train", "val", "test"))


def test_deterministic_and_independent_of_listing_order():
    a = as_names(make_split(IDS, seed=7), IDS)
    assert a == as_names(make_split(IDS, seed=7), IDS)
    shuffled = list(np.random.default_rng(1).permutation(IDS))
    assert a == as_names(make_split(shuffled, seed=7), shuffled)


def test_seeds_differ_and_repeated_splits_use_consecutive_seeds():
    splits = make_splits(IDS, SplitConfig(n_splits=3, seed=10))
    assert [s.seed for s in splits] == [10, 11, 12]
    tests = [as_names(s, IDS)["test"] for s in splits]
    for i in range(3):
        for j in range(i + 1, 3):
            overlap = len(tests[i] & tests[j]) / 200
            assert overlap < 0.5  # independent 20 % test parts overlap by about 20 %


def test_adding_images_does_not_move_existing_ones_much():
    small = as_names(make_split(IDS[:900], seed=3), IDS)
    large = as_names(make_split(IDS, seed=3), IDS)
    moved = sum(len(small[p] - large[p]) for p in small)
    assert moved < 90  # only images near the cuts change part


def test_grouped_split_never_straddles_a_group():
    groups = [f"prompt{i // 10}" for i in range(len(IDS))]  # 100 prompts of 10 images
    split = make_split(IDS, seed=0, groups=groups)
    owner = {}
    for part in ("train", "val", "test"):
        for i in split.part(part):
            assert owner.setdefault(groups[i], part) == part
    sizes = split.sizes()
    assert sizes["train"] + sizes["val"] + sizes["test"] == 1000
    assert abs(sizes["test"] - 200) <= 5 and abs(sizes["val"] - 100) <= 5  # at most half a group per cut
    assert all(s % 10 == 0 for s in sizes.values())
    assert as_names(split, IDS) != as_names(make_split(IDS, seed=1, groups=groups), IDS)


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="must sum to 1"):
        SplitConfig(fractions=(0.7, 0.2, 0.2))
    with pytest.raises(ValueError, match="non-negative"):
        SplitConfig(fractions=(1.1, -0.1, 0.0))
    with pytest.raises(ValueError, match="unique"):
        make_split(["a", "a", "b"], seed=0)
    with pytest.raises(ValueError, match="the val part .* gets no image from 4 images"):
        make_split(["a", "b", "c", "d"], seed=0)
    with pytest.raises(ValueError, match="grouped splits need a group"):
        make_splits(IDS, SplitConfig(grouped=True))
    with pytest.raises(ValueError, match="unknown split part"):
        make_split(IDS, seed=0).part("validation")


def test_to_dict_names_each_part():
    split = make_split(IDS[:20], seed=2)
    record = split.to_dict(IDS[:20])
    assert record["seed"] == 2
    assert sorted(record["train"] + record["val"] + record["test"]) == IDS[:20]
    assert len(record["test"]) == 4
