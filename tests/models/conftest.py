"""Fixtures for the model tests: single-threaded torch for the tiny models."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run 10-20x faster on one thread than on two on a loaded 2-core machine (OpenMP
    workers spin-waiting on each other per op): ~50 ms instead of ~0.5-10 s per tiny teacher step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
