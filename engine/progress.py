"""Progress lines for long work: items done of total and throughput, at most every few seconds."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("dpiqa.progress")


class Progress:
    """Logs `label: done/total shards, N images, R img/s` when called, rate-limited to `interval`.

    Args:
        label: what is running (`score`, `filter`).
        total: number of shards (or other units) to do.
        interval: seconds between lines.
        unit: what the throughput counts.
    """

    def __init__(self, label: str, total: int, interval: float = 10.0, unit: str = "images") -> None:
        self.label, self.total, self.interval, self.unit = label, total, interval, unit
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
        log.info("%s: %d/%d shards done%s, %s %s, %.1f %s/s",
                 self.label, done, self.total, failed_part, f"{count:,}", self.unit, rate, self.unit)
