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
_applied: bool | None = None


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
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # not glibc: nothing to set
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            # 2**31 - 1: the largest value the int argument takes (2 GiB of free heap top before a trim)
            _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
        log.debug("glibc malloc keeps freed memory: %s", _applied)
    return _applied
