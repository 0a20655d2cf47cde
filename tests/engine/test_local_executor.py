"""The in-process executor: each stage in its own thread, batches in order, errors raised in the caller."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from dpiqa.engine.executor.local import LocalExecutor
from dpiqa.engine.stages.base import Stage


class Expand(Stage):
    """A shard `n` -> n batches of one row, values n*10 + i (a source stage's shape: a generator)."""

    name = "expand"

    def __init__(self, log: list) -> None:
        self.log = log

    def __call__(self, batch):
        n = int(batch["shard"][0])
        self.log.append(("expand", n))
        for i in range(n):
            yield {"value": np.array([n * 10 + i])}


class Double(Stage):
    name = "double"

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at
        self.torn_down = False

    def __call__(self, batch):
        if self.fail_at is not None and int(batch["value"][0]) == self.fail_at:
            raise ValueError(f"bad value {self.fail_at}")
        return {"value": batch["value"] * 2}

    def teardown(self) -> None:
        self.torn_down = True


class SlowToLoad(Stage):
    """An actor-like stage whose `setup` (a model load) waits until the stages before it got going."""

    name = "slow-to-load"

    def __init__(self, upstream_busy: threading.Event, fail: bool = False) -> None:
        self.upstream_busy, self.fail = upstream_busy, fail
        self.saw_upstream = False
        self.torn_down = False

    def setup(self) -> None:
        if self.fail:
            raise OSError("weights file not found: /nowhere/model.safetensors")
        self.saw_upstream = self.upstream_busy.wait(timeout=30)

    def __call__(self, batch):
        return batch

    def teardown(self) -> None:
        self.torn_down = True


def pipeline_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("dpiqa-")]


def test_batches_reach_the_sink_in_order_through_every_stage() -> None:
    log, out = [], []
    LocalExecutor().run([{"shard": n} for n in (3, 1, 2)], [Expand(log), Double()], out.append)
    assert [int(b["value"][0]) for b in out] == [60, 62, 64, 20, 40, 42]  # (n*10 + i) * 2, shard by shard
    assert log == [("expand", 3), ("expand", 1), ("expand", 2)]
    assert pipeline_threads() == []


def test_earlier_stages_work_while_a_later_stage_loads() -> None:
    """The point of the threads: shards are read while the model loads. Without it the load below waits its
    30 s for the source and the assertion fails."""
    busy = threading.Event()
    log: list = []

    class Marking(Expand):
        def __call__(self, batch):
            yield from super().__call__(batch)
            if len(self.log) == 2:
                busy.set()

    slow = SlowToLoad(busy)
    out: list = []
    LocalExecutor().run([{"shard": 1}, {"shard": 1}, {"shard": 1}], [Marking(log), slow], out.append)
    assert slow.saw_upstream and len(out) == 3 and slow.torn_down


def test_an_error_in_a_stage_is_raised_here_and_stops_every_thread() -> None:
    double = Double(fail_at=21)
    out: list = []
    with pytest.raises(ValueError, match="bad value 21"):
        LocalExecutor().run([{"shard": 2}, {"shard": 9}], [Expand([]), double], out.append)
    assert [int(b["value"][0]) for b in out] == [40]  # the batch before the bad one, nothing after it
    assert double.torn_down and pipeline_threads() == []


def test_a_failed_setup_and_a_failing_sink_are_raised_here() -> None:
    slow = SlowToLoad(threading.Event(), fail=True)
    with pytest.raises(OSError, match="weights file not found"):
        LocalExecutor().run([{"shard": 1}], [Expand([]), slow], lambda batch: None)
    assert pipeline_threads() == []

    def sink(batch):
        raise RuntimeError("disk full")

    double = Double()
    many = [{"shard": 50}] * 20  # more than the queues hold: the stages must be stopped, not just finish
    with pytest.raises(RuntimeError, match="disk full"):
        LocalExecutor().run(many, [Expand([]), double], sink)
    assert double.torn_down and pipeline_threads() == []
