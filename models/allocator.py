"""glibc's malloc set up for inference on a CPU (scoring, a frozen backbone's features): memory torch frees stays
in the process for reuse.

By default glibc serves each allocation above a (dynamic, at most 32 MiB) threshold with a fresh `mmap` and
unmaps it on free, and trims the heap's top when freed: every large activation (a ViT-S layer's MLP at batch
32 is 50 MB) then page-faults fresh zeroed pages in, on every batch. Keeping them makes the `demo` model 1.29x
faster on a 2-core CPU (`python bench/cpu_allocator.py`). PyTorch's CPU tuning guide gives the same
advice with jemalloc or tcmalloc through `LD_PRELOAD`, which a process cannot do to itself once started, and
a user's worker may not have; `mallopt` on glibc's own allocator gets the same effect from inside.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_applied: bool | None = None
# What `one_arena` sets, for processes started from this one (a Ray worker reads it before its first allocation).
ONE_ARENA_ENV = {"MALLOC_ARENA_MAX": "1"}


def _mallopt():
    """glibc's `mallopt`, or None where the C library is not glibc (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to set
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def one_arena() -> bool:
    """Every thread that allocates for the first time after this call shares glibc's main arena.

    Why: glibc gives a thread of its own an arena of 64 MiB heaps, so a model run on any thread but the main one
    (a scoring worker's model thread, a threaded Ray actor's) gets each activation larger than that from `mmap`
    and faults it in again on every batch, and smaller ones from heaps it maps and unmaps: measured on a 2-core
    CPU, the EfficientNet-B0 student at batch 16 took 2.58 s a batch on a thread against 1.13 s on the main
    thread, and 1.28 s on a thread with one arena (`bench/engine_overhead.py` measures the engine with it).
    Call it before the process starts threads: the CLI does, first thing, and Ray's scoring workers get
    `ONE_ARENA_ENV` (the same setting, read by glibc at the process's start).

    Returns:
        Whether it applies (glibc only).
    """
    mallopt = _mallopt()
    return bool(mallopt and mallopt(_M_ARENA_MAX, 1))


def keep_freed_memory() -> bool:
    """Large blocks come from the heap and freed memory is kept (no `mmap` per block, no trimming), for the
    rest of this process. The cost: the process's resident memory does not shrink back after its peak, which
    for a worker that runs a model batch after batch is where it returns to anyway.

    Returns:
        Whether it applies: True on glibc (Linux), False elsewhere (musl, macOS, Windows: left as they are).
    """
    global _applied
    if _applied is None:
        _applied = False
        mallopt = _mallopt()
        if mallopt is not None:
            # 2**31 - 1: the largest value the int argument takes (2 GiB of free heap top before a trim)
            _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
        log.debug("glibc malloc keeps freed memory: %s", _applied)
    return _applied
