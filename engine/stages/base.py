"""The stage interface shared by the local and Ray Data executors."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar, TypeVar

import numpy as np

Batch = dict[str, np.ndarray]
S = TypeVar("S", bound="Stage")


# What `Stage.with_` may set: how a stage is scheduled, never what it computes.
RESOURCES = ("num_cpus", "num_gpus", "batch_size", "concurrency", "beside_actor")


class Stage(ABC):
    """One step of a pipeline over column batches (`dict[str, np.ndarray]`, Ray Data's numpy format).

    A stage that overrides `setup()` holds state (a model) and runs as a pool of actors that each call
    `setup()` once; any other stage runs as stateless tasks. Resources are class defaults that an
    instance may override (from the CLI or a cluster config) through a configured copy (`with_`), never guessed from
    the driver's hardware.
    """

    name: ClassVar[str] = "stage"
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int | None = None
    concurrency: int | tuple[int, int] | None = None
    # A light stateless stage that runs inside the actor before it in the same call (on Ray Data), instead of
    # as tasks of its own: one Ray task fewer per block, and no block of its input to hand over.
    beside_actor: bool = False

    def setup(self) -> None:  # noqa: B027 - an optional hook; overriding it makes the stage an actor
        """Load what the stage needs (a model, say); called once per worker before any batch."""

    @abstractmethod
    def __call__(self, batch: Batch) -> Batch | Iterator[Batch]:
        """Process one batch; a generator may yield several output batches."""

    def teardown(self) -> None:  # noqa: B027 - an optional hook
        """Release what `setup()` took."""

    @property
    def runs_as_actor(self) -> bool:
        return type(self).setup is not Stage.setup

    def with_(self: S, **resources: Any) -> S:
        """A copy of this stage with other resources (`num_cpus`, `num_gpus`, `batch_size`, `concurrency`,
        `beside_actor`); this stage is left as it was, so a stage built once (a library's, a test's) can be
        configured for several runs. NeMo Curator's `ProcessingStage.with_` does the same.

        Raises:
            TypeError: a name that is not one of the resources.
        """
        unknown = sorted(set(resources) - set(RESOURCES))
        if unknown:
            raise TypeError(f"{type(self).__name__}.with_: {', '.join(unknown)} not among {', '.join(RESOURCES)}")
        stage = copy.copy(self)
        vars(stage).update(resources)
        return stage


def take(batch: Batch, mask: np.ndarray) -> Batch:
    """The rows of `batch` where `mask` is true."""
    return {k: v[mask] for k, v in batch.items()}


def text_column(values: np.ndarray) -> np.ndarray:
    """A writable object array of str/None. Ray hands an all-null string column back as float NaNs."""
    out = np.empty(len(values), dtype=object)
    out[:] = [None if v is None or (isinstance(v, float) and v != v) else v for v in values]
    return out
