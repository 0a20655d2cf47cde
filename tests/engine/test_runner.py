"""The shard-job runner's own behaviour, with jobs that do no real work: what it says while a run waits."""

from __future__ import annotations

import logging
import time

from dpiqa.engine.output import OutputLocation
from dpiqa.engine.runner import ShardJob, run_shard_job
from dpiqa.engine.stages.write import ShardFact
from dpiqa.storage import ShardList


class Sleeper(ShardJob):
    """Finishes its one shard after `seconds`, reporting an image every `tick` seconds (never when None)."""

    label = "sleeper"

    def __init__(self, seconds: float, tick: float | None) -> None:
        self.seconds, self.tick = seconds, tick

    def process(self, shards, fact, units):  # noqa: ANN001, ANN201
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            time.sleep(self.tick or 0.05)
            if self.tick:
                units(1)
        for url in shards:
            fact(ShardFact(url, "a", rows=1, statuses={"ok": 1}))


def run(job: ShardJob, tmp_path) -> None:  # noqa: ANN001
    shards = ShardList(urls=["mem://a.tar"], names={"mem://a.tar": "a"}, root=None)
    result = run_shard_job(
        job, shards, OutputLocation(str(tmp_path / "out")), ["mem://a.tar"], 0, {}, "h", stall_warning=0.4
    )
    assert result.manifest["shards"]["written"] == 1


def stall_lines(caplog) -> list[str]:  # noqa: ANN001
    return [r.getMessage() for r in caplog.records if "nothing finished in the last" in r.getMessage()]


def test_a_run_that_finishes_nothing_for_a_while_says_so_and_keeps_saying_it(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="dpiqa.engine.runner")
    run(Sleeper(seconds=1.5, tick=None), tmp_path)
    lines = stall_lines(caplog)
    assert 2 <= len(lines) <= 4, lines  # at 0.4 s, then every 0.4 s while nothing finishes (1.5 s in all)
    assert lines[0].startswith("sleeper: nothing finished in the last 0s (0 of 1 shards done, 0 images)"), lines


def test_a_run_with_steady_progress_never_warns(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="dpiqa.engine.runner")
    run(Sleeper(seconds=1.5, tick=0.05), tmp_path)
    assert stall_lines(caplog) == []


def test_no_thread_of_the_run_holds_the_job_or_outlives_the_run(tmp_path):
    """A `dpiqa score --executor local` run once ended in SIGABRT ("terminate called without an active
    exception") after all its shards were written: the stall watcher's thread held the job (and through it the
    model) as its argument, dropped it as the thread ended, after the run had returned, and torch released the
    GIL while freeing a tensor just as the interpreter shut down (seen in a core dump). No thread of the run may
    hold the job, and none may still run when `run_shard_job` returns."""
    import threading

    before = set(threading.enumerate())
    seen: dict[str, list] = {}

    class Recorder(Sleeper):
        def process(self, shards, fact, units):  # noqa: ANN001, ANN201
            started = [t for t in threading.enumerate() if t not in before]
            seen["threads"] = started
            seen["holding"] = [t.name for t in started if any(a is self for a in getattr(t, "_args", ()))]
            super().process(shards, fact, units)

    run(Recorder(seconds=0.1, tick=0.05), tmp_path)
    assert seen["threads"], "the run starts its stall watcher"
    assert seen["holding"] == []
    assert [t.name for t in seen["threads"] if t.is_alive()] == []
