"""Seeded train/validation/test splits, repeated over seeds, optionally keeping groups together."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dpiqa.errors import UsageError

PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitConfig:
    """How a dataset is split for training and evaluation.

    The paper split 80/20 at random without a seed and picked the best epoch on the test split; we
    hold out a validation part for model selection and report the median over `n_splits` seeds.

    Args:
        fractions: the train, validation and test fractions (non-negative, summing to 1).
        n_splits: how many repeated splits; split `i` uses seed `seed + i`.
        seed: the first split's seed.
        grouped: keep images of the same group (AGIQA-3K: the same prompt) on one side of every split.
    """

    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    n_splits: int = 3
    seed: int = 0
    grouped: bool = False

    def __post_init__(self) -> None:
        if len(self.fractions) != 3 or any(f < 0 for f in self.fractions):
            raise UsageError(f"fractions must be three non-negative numbers (train, val, test), got {self.fractions}")
        if abs(sum(self.fractions) - 1.0) > 1e-6:
            raise UsageError(f"fractions must sum to 1, got {self.fractions} (sum {sum(self.fractions):g})")
        if self.fractions[0] == 0:
            raise UsageError("the train fraction must be positive")
        if self.n_splits < 1:
            raise UsageError(f"n_splits must be at least 1, got {self.n_splits}")

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.n_splits)]


@dataclass(frozen=True)
class Split:
    """One split: positions (into the ids it was made from, ascending) of each part.

    Args:
        seed: the seed that made it.
        train: positions of the training images.
        val: positions of the validation images (model selection).
        test: positions of the test images (touched once, for the reported numbers).
    """

    seed: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def part(self, name: str) -> np.ndarray:
        """The positions of `train`, `val`, `test`, or `all` (every position, ascending)."""
        if name == "all":
            return np.sort(np.concatenate([self.train, self.val, self.test]))
        if name not in PARTS:
            raise ValueError(f"unknown split part {name!r}; expected one of {', '.join(PARTS)}, all")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {name: len(self.part(name)) for name in PARTS}

    def to_dict(self, ids: Sequence[str]) -> dict:
        """The split as JSON-ready names per part (to record beside a report or a checkpoint)."""
        return {"seed": self.seed, **{name: [ids[int(i)] for i in self.part(name)] for name in PARTS}}


def _order_key(seed: int, unit: str) -> bytes:
    # A keyed hash instead of a random permutation: the order of a unit depends only on (seed, unit), so
    # a split does not depend on the order the dataset was listed in, on the numpy version, or on which
    # other images are present (adding images never moves existing ones between parts).
    return hashlib.blake2b(unit.encode(), key=seed.to_bytes(8, "little", signed=True), digest_size=16).digest()


def part_sizes(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """How many of `n` items go to train, val and test: val and test rounded, train the rest."""
    n_val = int(round(n * fractions[1]))
    n_test = int(round(n * fractions[2]))
    return n - n_val - n_test, n_val, n_test


def make_split(
    ids: Sequence[str],
    seed: int,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    groups: Sequence[str] | None = None,
    grouped: bool | None = None,
) -> Split:
    """Split `ids` into train, validation and test parts.

    Deterministic given the set of ids (and groups) and the seed: each id (or group) is ordered by a
    keyed hash of `(seed, id)` and the ordered list is cut at the fractions. With groups, whole groups
    are placed by where their middle falls in that list, so part sizes can miss the fractions by up to
    half a group at each cut.

    Args:
        ids: unique image ids (a dataset's names).
        seed: the split's seed.
        fractions: the train, validation and test fractions.
        groups: one group per id; ids of one group always land in the same part.
        grouped: whether the caller asked for a grouped split (`--grouped`): True with `groups` None is
            refused, False splits by image whatever `groups` holds; None uses `groups` as given.

    Raises:
        ValueError: on duplicate ids, groups of the wrong length, a grouped split without groups, or a part
            with a positive fraction that would get no image.
    """
    if grouped and groups is None:
        raise UsageError("--grouped splits need a group per image, and this dataset has none; drop --grouped")
    if grouped is False:
        groups = None
    SplitConfig(fractions=tuple(fractions))  # validates the fractions
    n = len(ids)
    if len(set(ids)) != n:
        raise ValueError("split ids must be unique")
    if groups is not None and len(groups) != n:
        raise ValueError(f"{len(groups)} groups for {n} ids")
    units = [str(g) for g in groups] if groups is not None else [str(i) for i in ids]
    unit_members: dict[str, list[int]] = {}
    for position, unit in enumerate(units):
        unit_members.setdefault(unit, []).append(position)
    order = sorted(unit_members, key=lambda u: _order_key(seed, u))
    n_train, n_val, _ = part_sizes(n, fractions)
    cuts = (n_train, n_train + n_val)
    parts: list[list[int]] = [[], [], []]
    start = 0
    for unit in order:
        members = unit_members[unit]
        middle = start + len(members) / 2
        parts[0 if middle <= cuts[0] else 1 if middle <= cuts[1] else 2].extend(members)
        start += len(members)
    for name, fraction, members in zip(PARTS, fractions, parts, strict=True):
        if fraction > 0 and not members:
            what = f"{len(unit_members)} groups" if groups is not None else f"{n} images"
            raise ValueError(
                f"the {name} part ({fraction:g}) gets no image from {what}; use more data or larger fractions"
            )
    train, val, test = (np.asarray(sorted(p), dtype=np.int64) for p in parts)
    return Split(seed, train, val, test)


def make_splits(ids: Sequence[str], config: SplitConfig, groups: Sequence[str] | None = None) -> list[Split]:
    """The config's repeated splits of `ids` (seeds `config.seed`, `config.seed + 1`, ...).

    Args:
        ids: unique image ids.
        config: fractions, number of splits, first seed and whether to group.
        groups: one group per id; required when `config.grouped`, ignored otherwise.
    """
    return [make_split(ids, seed, config.fractions, groups, grouped=config.grouped) for seed in config.seeds]
