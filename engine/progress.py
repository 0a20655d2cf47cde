"""Progress lines for long work: items done of total and throughput, at most every few seconds."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("dpiqa.progress")


class Progress:
    """Logs `label: done/total shards done, N images, R images/s` when called, rate-limited to `interval`.

    Args:
        label: what is running (`score`, `filter`, `eval`).
        total: number of work units (shards) to do.
        interval: seconds between lines.
        unit: what the throughput counts.
        done_unit: what `total` counts; when it equals `unit`, the line is `done/total images, R images/s`.
    """

    def __init__(self, label: str, total: int, interval: float = 10.0, unit: str = "images",
                 done_unit: str = "shards") -> None:
        self.label, self.total, self.interval, self.unit, self.done_unit = label, total, interval, unit, done_unit
        self.start = time.monotonic()
        self.last = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def update(self, done: int, count: int, failed: int = 0, force: bool = False) -> None:
        t = time.monotonic()
        if not force and t - self.last < self.interval:
            return
        self.last = t
        rate = count / max(t - self.start, 1e-9)
        failed_part = f", {failed} failed" if failed else ""
        if self.done_unit == self.unit:
            log.info("%s: %s/%s %s%s, %.1f %s/s", self.label, f"{count:,}", f"{self.total:,}", self.unit,
                     failed_part, rate, self.unit)
            return
        log.info("%s: %d/%d %s done%s, %s %s, %.1f %s/s", self.label, done, self.total, self.done_unit,
                 failed_part, f"{count:,}", self.unit, rate, self.unit)
