"""An executor in this process (small runs, tests, debugging): one worker, a few units in flight on threads."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Sequence
from typing import Any

from dpiqa.engine.executor.base import Executor, UnitWorker, WorkerPool, WorkerSetupError


class LocalExecutor(Executor):
    """Runs units in this process: one `UnitWorker`, set up once, `depth` units at a time on threads.

    Threads, not processes: decoding (Pillow) and scoring (torch) release the GIL, so on a small machine one
    unit reads and decodes while another scores, with no copies between processes and no start-up cost. A
    Ray cluster runs the same workers as actors (`RayExecutor`); this is the same loop for jobs too small to
    pay for Ray.
    """

    in_process = True

    def pool(self, worker: UnitWorker, slots: int = 1, depth: int = 2) -> WorkerPool:
        return LocalPool(worker, depth)


class LocalPool(WorkerPool):
    """One worker (slot 0) in this process; a thread per unit in flight."""

    slots = 1

    def __init__(self, worker: UnitWorker, depth: int) -> None:
        self.worker, self.depth = worker, max(1, depth)
        self._threads = cf.ThreadPoolExecutor(self.depth, thread_name_prefix=f"dpiqa-{worker.label}")
        self._setup = self._threads.submit(worker.setup)  # the model loads while the first units are queued

    def ready(self, slot: int) -> bool:
        if not self._setup.done():
            return False
        exc = self._setup.exception()
        if exc is not None:
            raise WorkerSetupError(
                f"{self.worker.label}: its worker could not start: {type(exc).__name__}: {exc}"
            ) from exc
        return True

    def submit(self, slot: int, unit: dict) -> cf.Future:
        return self._threads.submit(self._run, unit)

    def _run(self, unit: dict) -> dict:
        self._setup.result()  # a failed setup fails every unit with its own error
        return self.worker(unit)

    def wait(self, tickets: Sequence[Any], timeout: float) -> list:
        done, _ = cf.wait(list(tickets), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return list(done)

    def result(self, ticket: cf.Future) -> dict:
        return ticket.result()

    def progress(self) -> list[tuple[int, int, float] | None]:
        return [self.worker.progress() if self._setup.done() else None]

    def close(self) -> None:
        self.worker.stop()  # units still in flight (an interrupted run) end at their next chunk, not the shard's end
        self._threads.shutdown(wait=True, cancel_futures=True)
        if self._setup.done() and self._setup.exception() is None:
            self.worker.teardown()
