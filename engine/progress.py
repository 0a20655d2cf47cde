"""Progress lines for long work: done of total, throughput and an estimate of the time left, at a steady
cadence from the first items on."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("dpiqa.progress")


def duration(seconds: float) -> str:
    """`3h05m`, `12m30s`, `45s`."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def show_in_this_process() -> None:
    """Make progress lines visible in a process whose logging nobody configured (a Ray worker: its stderr
    reaches the driver's terminal, but Python would print only warnings there)."""
    if log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


class Progress:
    """Logs `label: done/total shards done, N images, R images/s, ETA T` when called, at most every
    `interval` seconds (the first line as soon as there is something to show).

    Args:
        label: what is running (`score`, `filter`, `epoch 3/30`).
        total: work units (shards, or images when `done_unit == unit`); None when not known.
        interval: seconds between lines.
        unit: what the throughput counts.
        done_unit: what `total` counts; when it equals `unit`, the line is `count/total images, R images/s`.
    """

    def __init__(
        self, label: str, total: int | None, interval: float = 10.0, unit: str = "images", done_unit: str = "shards"
    ) -> None:
        self.label, self.total, self.interval, self.unit, self.done_unit = label, total, interval, unit, done_unit
        self.start = time.monotonic()
        self.last: float | None = None

    def update(
        self, done: int, count: int, failed: int = 0, force: bool = False, expected_count: int | None = None
    ) -> None:
        """Log a line if it is time.

        Args:
            done: work units finished.
            count: items processed (the throughput's unit).
            failed: work units failed.
            force: log now (the final line).
            expected_count: the items the whole run will process, when known or estimated (for the ETA
                when `done_unit != unit`).
        """
        t = time.monotonic()
        if not force and (count <= 0 or (self.last is not None and t - self.last < self.interval)):
            return
        self.last = t
        elapsed = max(t - self.start, 1e-9)
        rate = count / elapsed
        failed_part = f", {failed} failed" if failed else ""
        if self.done_unit == self.unit:
            of = f"/{self.total:,}" if self.total else ""
            line = f"{self.label}: {count:,}{of} {self.unit}{failed_part}, {rate:.1f} {self.unit}/s"
            expected_count = self.total
        else:
            of = f"/{self.total}" if self.total is not None else ""
            line = (
                f"{self.label}: {done}{of} {self.done_unit} done{failed_part}, {count:,} {self.unit}, "
                f"{rate:.1f} {self.unit}/s"
            )
        if expected_count and rate > 0 and count < expected_count and not force:
            line += f", ETA {duration((expected_count - count) / rate)}"
        log.info(line)
