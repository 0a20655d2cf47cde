"""An executor that runs the stages in this process, item by item (tests, debugging, tiny runs)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from dpiqa.engine.executor.base import Executor, Sink
from dpiqa.engine.stages.base import Batch, Stage


class LocalExecutor(Executor):
    """Runs every stage in-process: one item at a time, each stage's output straight into the next."""

    in_process = True

    def start(self, cls: type, args: list[tuple]) -> list:
        return [cls(*a) for a in args]

    def call(self, handles: list, method: str, *args: Any) -> list:
        return [getattr(h, method)(*args) for h in handles]

    def stop(self, handles: list) -> None:
        for h in handles:
            if hasattr(h, "close"):
                h.close()

    def run(self, items: list[dict], stages: Sequence[Stage], sink: Sink) -> None:
        for stage in stages:
            stage.setup()
        try:
            for item in items:
                batch = {k: np.asarray([v], dtype=object if isinstance(v, str) else None) for k, v in item.items()}
                for out in _chain(batch, stages):
                    sink(out)
        finally:
            for stage in stages:
                stage.teardown()


def _chain(batch: Batch, stages: Sequence[Stage]) -> Iterator[Batch]:
    if not stages:
        yield batch
        return
    result = stages[0](batch)
    for out in [result] if isinstance(result, dict) else result:
        yield from _chain(out, stages[1:])
