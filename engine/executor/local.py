"""An executor that runs the stages in this process (tiny runs, tests, debugging): each stage in a thread of
its own, so reading and decoding the next images overlap with scoring the last ones."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from dpiqa.engine.executor.base import Executor, Sink
from dpiqa.engine.stages.base import Batch, Stage

_END = object()  # the end of a stage's output
_POLL = 0.1  # seconds between looks at the stop flag while waiting on a queue
# Batches a stage may run ahead of the next one: enough for decoding to go on through a model's load (the demo
# model's imports and weights take ~3 s on 2 cores, a batch of 36 images decodes in ~0.4 s); at most 8 batches
# of model input held per queue (8 x 32 x 512 x 512 x 3 bytes = 200 MB for the full-size models).
_DEPTH = 8


class LocalExecutor(Executor):
    """Runs every stage in-process, each in its own thread, the stages joined by short queues; output
    batches reach the sink in the order the stages made them, as in a plain loop.

    Threads, not processes: decoding (Pillow) and scoring (torch) release the GIL, so on a small machine
    the next batch decodes while the model scores this one, with no copies between processes and no start-up
    cost. Ray Data does the same across a cluster; this is the same pipeline for jobs too small to pay for Ray.
    """

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
        if not stages:  # nothing to run: the items themselves are the output
            for batch in _batches(items):
                sink(batch)
            return
        _Pipeline(items, stages).drain_into(sink)


class _Pipeline:
    """One thread per stage; `outputs[i]` holds stage i's batches, `closed[i]` says its reader has stopped.

    A stage that ends (done, failed, or its reader gone) closes its input, so the stages before it stop at
    their next batch, and ends its output, so the stages after it finish what it made: as in a plain loop,
    every batch made before a failure reaches the sink. The first error is raised in the caller's thread,
    with its own traceback, once every thread has ended.
    """

    def __init__(self, items: list[dict], stages: Sequence[Stage]) -> None:
        self.errors: list[BaseException] = []
        self.outputs = [queue.Queue(maxsize=_DEPTH) for _ in stages]
        self.closed = [threading.Event() for _ in stages]
        self.threads = [
            threading.Thread(target=self._work, args=(i, stage), name=f"dpiqa-{stage.name}", daemon=True)
            for i, stage in enumerate(stages)
        ]
        self.items = items

    def drain_into(self, sink: Sink) -> None:
        for thread in self.threads:
            thread.start()
        try:
            for batch in self._take(len(self.outputs) - 1):
                sink(batch)
        finally:
            self.closed[-1].set()
            for thread in self.threads:
                thread.join()
        if self.errors:
            raise self.errors[0]

    def _work(self, i: int, stage: Stage) -> None:
        source = _batches(self.items) if i == 0 else self._take(i - 1)
        try:
            # In this thread: the stages before it already read and decode while it loads a model.
            stage.setup()
            try:
                for batch in source:
                    result = stage(batch)
                    for produced in [result] if isinstance(result, dict) else result:
                        if not self._put(i, produced):
                            return
            finally:
                stage.teardown()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, which raises it
            self.errors.append(exc)
        finally:
            if i > 0:
                self.closed[i - 1].set()
            self._put(i, _END)

    def _put(self, i: int, batch: Any) -> bool:
        """Hand `batch` to stage i's reader; False when that reader has stopped."""
        while not self.closed[i].is_set():
            try:
                self.outputs[i].put(batch, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _take(self, i: int) -> Iterator[Batch]:
        while True:
            try:
                batch = self.outputs[i].get(timeout=_POLL)
            except queue.Empty:
                continue
            if batch is _END:
                return
            yield batch


def _batches(items: list[dict]) -> Iterator[Batch]:
    """Each item as a batch of one row (the source stage expands a shard into its images)."""
    for item in items:
        yield {k: np.asarray([v], dtype=object if isinstance(v, str) else None) for k, v in item.items()}
