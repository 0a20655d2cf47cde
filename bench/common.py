"""Shared by the benchmarks: commands as typed, peak memory of a process tree, and printing a result that is also
written to `bench/results/` (the machine's description is `dpiqa.version.machine`)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil


def publish(text: str, out: str | Path | None) -> None:
    """Print a benchmark's result (Markdown) and, with `out`, write it there too."""
    text = text.rstrip("\n") + "\n"
    print(text, end="")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)


class TreePeakRSS:
    """Samples the memory of a process and all its descendants (a `dpiqa` driver with the Ray processes it
    starts) every `interval` seconds, keeping the peaks in MiB: `peak`, the summed resident set size (which
    counts pages shared between processes, such as Ray's object store, once per process), and `peak_pss`,
    the summed proportional set size (shared pages split between their processes: the tree's real
    footprint), with `processes`, how many processes were alive at the PSS peak."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0.0
        self.peak_pss = 0.0
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = pss = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    full = p.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss += full.rss
                pss += getattr(full, "pss", full.rss)  # PSS is Linux-only; elsewhere RSS stands in
            self.peak = max(self.peak, rss / 2**20)
            if pss / 2**20 > self.peak_pss:
                self.peak_pss, self.processes = pss / 2**20, len(procs)
            time.sleep(self.interval)

    def __enter__(self) -> TreePeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
