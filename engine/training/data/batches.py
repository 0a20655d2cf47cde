"""Training batches: the seeded global batches of a materialised set (`EpochBatches`), as torch tensors."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from dpiqa.engine.stages.base import Batch
from dpiqa.engine.training.data.labeled import RANK_COLUMNS, object_array


def batch_tensor(column: np.ndarray):  # torch.Tensor (torch imported lazily)
    """A batch column as a tensor: zero-copy where numpy allows it, a copy where Ray hands out a read-only view
    of its object store (a tensor over it warns, and writing into it would be undefined)."""
    import torch

    column = np.ascontiguousarray(column)
    return torch.from_numpy(column if column.flags.writeable else column.copy())


def to_torch(batch: Batch, map_shape: tuple[int, ...] | None = None) -> dict:
    """A numpy batch -> tensors: `image` uint8, `target`, and the teacher's outputs where present
    (missing maps become NaN rows, so the loss leaves them out)."""
    import torch

    out = {"target": torch.as_tensor(batch["target"].astype(np.float32))}
    for column in ("image", "statistics", "features"):
        if column in batch:
            out[column] = batch_tensor(batch[column])
    for column in RANK_COLUMNS:
        if column in batch:
            out[column] = torch.as_tensor(np.asarray(batch[column], dtype=np.int64))
    if "teacher_map" in batch and map_shape is not None:
        maps = np.full((len(batch["teacher_map"]), *map_shape), np.nan, dtype=np.float32)
        for i, raw in enumerate(batch["teacher_map"]):
            if isinstance(raw, (bytes, bytearray, memoryview)):  # all-missing columns come back as NaN floats
                maps[i] = np.frombuffer(raw, dtype=np.float16).reshape(map_shape)
        out["teacher_map"] = torch.from_numpy(maps)
        out["teacher_score"] = torch.as_tensor(batch["teacher_score"].astype(np.float32))
    return out


class EpochBatches:
    """A materialised training set, served as global batches of a seeded permutation that depends on the
    epoch only: every worker draws the same permutation and takes its slice of each global batch.

    Why not Ray Train's own split of a shuffled dataset: Ray reshuffles per execution of the dataset, so a
    run resumed at epoch k would see epoch 0's order again, and a worker's share of a batch would depend
    on scheduling. Here epoch k of a resumed run is epoch k of an uninterrupted one, and one worker or
    eight train on the same global batches in the same order (the paper's recipe at any scale).

    The rows stay in the object store as one numpy block per Ray block; a worker reads the blocks its
    rows lie in (zero-copy on the node that holds them, fetched and then kept on other nodes). The last
    partial global batch of an epoch is left out: its rows come up in other epochs' permutations.

    With `group_column`, the permutation is of groups, not rows: every epoch the groups come in another
    seeded order and a group's rows (in another seeded order) follow each other, so that a batch holds
    several distortion levels of one source for a ranking loss (a group cut by a batch boundary loses the
    pairs across it). Rows whose group is -1 are groups of one.

    Args:
        ds: the materialised dataset (built on the driver; this object travels to the workers).
        columns: the columns a batch carries.
        group_column: an int64 column of group ids, or None to shuffle rows.
    """

    def __init__(self, ds, columns: list[str], group_column: str | None = None) -> None:
        import ray

        # Each Ray block becomes one numpy block as `Dataset.to_numpy_refs` makes it, by one task per block that
        # also returns the block's row count and group ids (small objects: no data comes to the driver). Counting
        # in separate zero-CPU tasks had Ray start a Python worker per block at once (60 and more on a 2-CPU node,
        # each restoring its spilled block) before training could start.
        to_numpy = ray.remote(num_returns=3)(_numpy_block)
        self.refs, sizes, groups = [], [], []
        for bundle in ds.select_columns(columns).iter_internal_ref_bundles():
            for block in bundle.block_refs:
                ref, rows, group = to_numpy.remote(block, columns, group_column)
                self.refs.append(ref)
                sizes.append(rows)
                groups.append(group)
        self.sizes = np.asarray(ray.get(sizes), dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)])
        self.columns = columns
        self.groups = None
        if group_column is not None:
            parts = ray.get(groups)
            self.groups = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def steps(self, global_batch: int) -> int:
        return len(self) // global_batch

    def batches(self, epoch: int, seed: int, global_batch: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """This worker's part of each global batch of `epoch`, in order."""
        import ray

        if global_batch % world:
            raise ValueError(f"global batch {global_batch} does not divide among {world} workers")
        per_worker = global_batch // world
        order = self.order(epoch, seed)
        cache: dict[int, Batch] = {}
        for step in range(self.steps(global_batch)):
            start = step * global_batch + rank * per_worker
            rows = order[start : start + per_worker]
            blocks = np.searchsorted(self.starts, rows, side="right") - 1
            for b in np.unique(blocks):
                if int(b) not in cache:
                    cache[int(b)] = ray.get(self.refs[int(b)])
            yield {c: _take([cache[int(b)][c] for b in blocks], rows - self.starts[blocks]) for c in self.columns}

    def order(self, epoch: int, seed: int) -> np.ndarray:
        """The epoch's row order: a seeded permutation of rows, or of groups with their rows together."""
        rng = np.random.default_rng([seed, epoch])
        if self.groups is None:
            return rng.permutation(len(self))
        groups = np.where(self.groups < 0, -1 - np.arange(len(self)), self.groups)  # -1: a group of its own
        unique, inverse = np.unique(groups, return_inverse=True)
        rank = rng.permutation(len(unique))[inverse]
        return np.lexsort((rng.random(len(self)), rank))


def _take(arrays: list[np.ndarray], offsets: np.ndarray) -> np.ndarray:
    """Row `offsets[i]` of `arrays[i]`, stacked."""
    picked = [a[int(i)] for a, i in zip(arrays, offsets, strict=True)]
    if arrays and arrays[0].dtype == object:
        return object_array(picked)
    return np.stack(picked)


def _numpy_block(block, columns: list[str], group_column: str | None):  # a Ray block
    """A Ray block as `{column: ndarray}` (what `Dataset.to_numpy_refs` makes of it), its row count and its group
    column (None without one)."""
    from ray.data.block import BlockAccessor

    accessor = BlockAccessor.for_block(block)
    arrays = accessor.to_numpy(list(columns))
    return arrays, accessor.num_rows(), (arrays[group_column] if group_column is not None else None)
