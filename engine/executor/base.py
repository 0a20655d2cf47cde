"""The executor interface: run map stages over input rows and feed every output batch to a sink."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from dpiqa.engine.stages.base import Batch, Stage

Sink = Callable[[Batch], None]


class Executor(ABC):
    """Runs `stages` (the first one receives batches of `items`) and calls `sink` on each output batch."""

    in_process: bool = False  # whether the stages run in the caller's process

    def retryable(self, exc: BaseException) -> bool:
        """Whether a failed run is worth starting again on its unfinished items (a lost node, say)."""
        return False

    @abstractmethod
    def run(self, items: list[dict], stages: Sequence[Stage], sink: Sink) -> None:
        """Process every item; returns when the last output batch has gone to the sink."""

    def default_writers(self) -> int:
        """How many shard writers a job starts when not told: one per node."""
        return 1

    @abstractmethod
    def start(self, cls: type, args: list[tuple]) -> list:
        """Long-lived workers `cls(*a)`, one per `a` in `args`, that stages can hand rows to (the shard
        writers): objects in this process, or Ray actors spread over the cluster."""

    @abstractmethod
    def call(self, handles: list, method: str, *args: Any) -> list:
        """`handle.method(*args)` on each of `handles`, concurrently; a result is None where the worker is
        gone (its process or node died)."""

    @abstractmethod
    def stop(self, handles: list) -> None:
        """End the workers of `start`."""
