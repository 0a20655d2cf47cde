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
    starts), keeping the peaks in MiB: `peak`, the summed resident set size (which counts pages shared between
    processes, such as Ray's object store, once per process), every `interval` seconds, and `peak_pss`, the
    summed proportional set size (shared pages split between their processes: the tree's real footprint),
    every `pss_interval` seconds, with `processes`, how many processes were alive at the PSS peak, and `trace`,
    `(time.time(), summed RSS in MiB)` at every sample (to tell growth during a run from its early peak).

    Why two rates: the resident size is one read of `/proc/PID/statm`, but the proportional size makes the
    kernel walk every page table of the process (`smaps`, or `smaps_rollup`: the same cost), ~40 ms of CPU for a
    local Ray's 10 processes with a model loaded. Sampled every 0.1 s that took nearly a third of a core from the run
    being measured, more for Ray's ten processes than for one, and made the Ray executor look 0.72x of the bare
    loop where it runs at the in-process rate (bench/results/engine-overhead-cpu.md, 2026-12-08)."""

    def __init__(self, pid: int, interval: float = 0.1, pss_interval: float = 2.0) -> None:
        self.root = psutil.Process(pid)
        self.interval, self.pss_interval = interval, pss_interval
        self.peak_pss = 0.0
        self.processes = 0
        self.trace: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        next_pss = time.monotonic()
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            with_pss = time.monotonic() >= next_pss
            if with_pss:
                next_pss = time.monotonic() + self.pss_interval
            rss = pss = 0
            for p in procs:
                try:
                    if with_pss:
                        full = p.memory_full_info()
                        rss += full.rss
                        pss += getattr(full, "pss", full.rss)  # PSS is Linux-only; elsewhere RSS stands in
                    else:
                        rss += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.trace.append((time.time(), rss / 2**20))
            if with_pss and pss / 2**20 > self.peak_pss:
                self.peak_pss, self.processes = pss / 2**20, len(procs)
            time.sleep(self.interval)

    @property
    def peak(self) -> float:
        """The peak summed RSS (MiB) of every sample."""
        return max((rss for _, rss in self.trace), default=0.0)

    def peak_until(self, when: float) -> float:
        """The peak summed RSS (MiB) of the samples taken up to `when` (a `time.time()`)."""
        return max((rss for t, rss in self.trace if t <= when), default=0.0)

    def __enter__(self) -> TreePeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
