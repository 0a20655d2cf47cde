"""`keep_freed_memory`: a large tensor allocated again after it was freed reuses the process's pages."""

from __future__ import annotations

import subprocess
import sys

import pytest

# In a fresh process (this one's malloc may already be set by a scorer): glibc's default first, then kept.
CHILD = """
import resource, torch
import dpiqa.models.allocator as allocator
def faults(n):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        torch.empty(16 * 2**20).fill_(1.0)  # 64 MiB, written, freed
        [str(i) * 3 for i in range(1000)]  # small objects between the large blocks, as in a real run
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
default = faults(20)
assert allocator.keep_freed_memory()
faults(10)  # the heap settles
print(default, faults(20))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc is Linux's")
def test_freed_memory_is_reused_instead_of_faulted_in_again() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True).stdout
    default, kept = map(int, out.split())
    pages = 64 * 2**20 // 4096
    assert default > 10 * pages  # every pass faults fresh zeroed pages in
    assert kept < pages  # once settled, the heap's pages are reused
