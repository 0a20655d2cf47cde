"""The shard loop's own behaviour (`engine.runner`), with workers that do no real work: what it says while a
run waits, which threads it leaves, and counters that are right after many units."""

from __future__ import annotations

import logging
import threading
import time

from dpiqa.engine.executor.base import UnitWorker
from dpiqa.engine.executor.local import LocalExecutor
from dpiqa.engine.output import OutputLocation
from dpiqa.engine.runner import ShardJob, run_shard_job
from dpiqa.engine.shards.listing import ShardList


class SleepWorker(UnitWorker):
    """Finishes a unit after `seconds`, counting a row every `tick` seconds (never when None)."""

    label = "sleeper"

    def __init__(self, seconds: float, tick: float | None) -> None:
        self.seconds, self.tick = seconds, tick
        self.rows = 0

    def __call__(self, unit: dict) -> dict:
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            time.sleep(self.tick or 0.05)
            if self.tick:
                self.rows += 1
        return {"url": unit["url"], "name": unit["name"], "rows": 1, "statuses": {"ok": 1}}

    def progress(self) -> tuple[int, int]:
        return self.rows, self.rows


class Sleeper(ShardJob):
    label = "sleeper"

    def __init__(self, seconds: float, tick: float | None) -> None:
        self.seconds, self.tick = seconds, tick

    def worker(self) -> UnitWorker:
        return SleepWorker(self.seconds, self.tick)


def run(job: ShardJob, tmp_path, n: int = 1, **kwargs):
    urls = [f"mem://{i:05d}.tar" for i in range(n)]
    shards = ShardList(urls=urls, names={u: u[6:11] for u in urls}, root=None)
    kwargs.setdefault("stall_warning", 0.4)
    result = run_shard_job(
        job, LocalExecutor(), shards, OutputLocation(str(tmp_path / "out")), urls, 0, {}, "h", **kwargs
    )
    assert result.manifest["shards"]["written"] == n
    return result


def stall_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "nothing finished in the last" in r.getMessage()]


def test_a_run_that_finishes_nothing_for_a_while_says_so_and_keeps_saying_it(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr("dpiqa.engine.runner.POLL_SECONDS", 0.1)
    caplog.set_level(logging.WARNING, logger="dpiqa.engine.runner")
    run(Sleeper(seconds=1.5, tick=None), tmp_path, poll=0.1)
    lines = stall_lines(caplog)
    assert 2 <= len(lines) <= 4, lines  # at 0.4 s, then every 0.4 s while nothing finishes (1.5 s in all)
    assert lines[0].startswith("sleeper: nothing finished in the last 0s (0 units done, 1 in flight)"), lines


def test_a_run_with_steady_progress_never_warns(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="dpiqa.engine.runner")
    run(Sleeper(seconds=1.5, tick=0.05), tmp_path, poll=0.1)
    assert stall_lines(caplog) == []


def test_no_thread_of_the_run_outlives_it(tmp_path):
    """A `dpiqa score --executor local` run once ended in SIGABRT ("terminate called without an active
    exception") after all its shards were written: a thread of the run that held the model dropped it after
    the run had returned, and torch released the GIL while freeing a tensor just as the interpreter shut down
    (seen in a core dump). No thread of the run may still run when `run_shard_job` returns."""
    before = set(threading.enumerate())
    seen: dict[str, list] = {}

    class Recorder(SleepWorker):
        def __call__(self, unit: dict) -> dict:
            seen["threads"] = [t for t in threading.enumerate() if t not in before]
            return super().__call__(unit)

    class Job(Sleeper):
        def worker(self) -> UnitWorker:
            return Recorder(0.1, 0.05)

    run(Job(0.1, 0.05), tmp_path)
    assert seen["threads"], "the run's units run on threads of their own"
    assert [t.name for t in seen["threads"] if t.is_alive()] == []


def test_counters_after_many_units_are_exact(tmp_path):
    """The driver adds each unit's result once: 300 units of 1 row, two in flight at a time."""
    result = run(Sleeper(seconds=0.0, tick=None), tmp_path, n=300, depth=2)
    m = result.manifest
    assert (m["rows"], m["statuses"], m["shards"]["written"]) == (300, {"ok": 300}, 300)
    assert m["retries"]["units_started_again"] == 0
