"""The executor interface: run map stages over input rows and feed every output batch to a sink."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from engine.stages.base import Batch, Stage

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
