"""The executor interface: workers that each do one unit of work (a shard) per call, in a pool the runner drives.

A unit is the unit of work and of failure (img2dataset's distributor: one call reads, processes and writes
one whole shard; NeMo Curator's tasks that stay intact through the GPU stages). The shard loop that hands
units to the pool, retries one unit alone, notices a lost or hung worker and counts everything is the
runner's (`dpiqa.engine.runner.run_units`): written once for every executor and every job.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any


class UnitWorker(ABC):
    """Does one unit per call in a worker set up once (a model loaded once per actor).

    The object is built on the driver with settings only (it travels to the workers by pickle); `setup()`
    runs once in the worker before its first unit. Calls may run concurrently in one worker (`depth` units in
    flight per worker, so that one unit's reading and writing overlap another's scoring): `__call__` must be
    thread-safe. `progress()` is called from yet another thread.

    Attributes:
        label: what the units are, in log lines (`score`, `filter`, `audit`).
        num_cpus, num_gpus: resources of one worker on Ray.
    """

    label: str = "unit"
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def setup(self) -> None:  # noqa: B027 - an optional hook
        """Load what the units need (a model); once per worker, before the first unit."""

    @abstractmethod
    def __call__(self, unit: dict) -> dict:
        """Do `unit` whole (read, process, write, commit) and return its small result. Raises when the unit
        failed in a way worth another attempt (the runner retries it alone, up to its limit)."""

    def progress(self) -> tuple[int, int, float]:
        """`(rows of the units in flight now, rows processed since setup, seconds since the stalest unit in
        flight last processed a row)`: the first for progress lines, the others to tell a hung unit."""
        return 0, 0, 0.0

    def stop(self) -> None:  # noqa: B027 - an optional hook
        """Ask the units in flight to end soon (Ctrl-C in this process): each raises at its next step."""

    def teardown(self) -> None:  # noqa: B027 - an optional hook
        """Release what `setup()` took."""


class WorkerLost(RuntimeError):
    """The worker that ran a unit is gone (its process or node died, or it was stopped as hung): the unit
    did not fail by itself and is run again elsewhere."""


class WorkerSetupError(ValueError):
    """A worker's setup failed (a model that cannot load, a missing dependency): every worker would fail the
    same way, so the run stops with this error instead of retrying."""


class WorkerPool(ABC):
    """`slots` workers, each taking up to `depth` units at once.

    Tickets are opaque handles of submitted units (futures, Ray object refs)."""

    slots: int
    depth: int
    # Whether a worker that stops making progress can be stopped and replaced (a Ray actor can; a thread of
    # this process cannot be killed).
    restartable: bool = False

    @abstractmethod
    def ready(self, slot: int) -> bool:
        """Whether the worker in `slot` has finished its setup (units are only given to ready workers: one that
        the cluster cannot place yet must not hold units).

        Raises:
            WorkerSetupError: its setup failed (a model that cannot load): the run cannot go on.
        """

    @abstractmethod
    def submit(self, slot: int, unit: dict) -> Any:
        """Start `unit` on the worker in `slot`; returns its ticket."""

    @abstractmethod
    def wait(self, tickets: Sequence[Any], timeout: float) -> list:
        """The tickets of `tickets` that have finished, waiting up to `timeout` seconds for the first."""

    @abstractmethod
    def result(self, ticket: Any) -> dict:
        """A finished unit's result.

        Raises:
            WorkerLost: the worker died with the unit in flight.
            Exception: the unit's own failure.
        """

    @abstractmethod
    def progress(self) -> list[tuple[int, int, float] | None]:
        """Each slot's `UnitWorker.progress()`, None for a worker that did not answer within seconds (still
        starting, or stuck)."""

    def restart(self, slot: int) -> None:
        """Stop the worker in `slot` and start a fresh one (its units in flight are lost with it)."""
        raise NotImplementedError(f"{type(self).__name__} cannot replace a worker")

    def generation(self, slot: int) -> int:
        """How many times the worker in `slot` was replaced (a ticket of an older worker is stale)."""
        return 0

    @abstractmethod
    def close(self) -> None:
        """Stop every worker."""


class Executor(ABC):
    """Where units run: this process (`LocalExecutor`) or Ray actors on a cluster (`RayExecutor`)."""

    in_process: bool = False  # whether the units run in the caller's process

    @abstractmethod
    def pool(self, worker: UnitWorker, slots: int, depth: int = 2) -> WorkerPool:
        """Start `slots` workers each holding `worker` (set up once), `depth` units in flight on each."""

    def default_slots(self, worker: UnitWorker) -> int:
        """How many workers a job starts when not told: as many as the resources hold (GPUs for a GPU worker)."""
        return 1
