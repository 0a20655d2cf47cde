"""Ray's scoring workers start with one malloc arena (`MALLOC_ARENA_MAX=1`): their model runs on a thread of its
own, which without it ran 2x slower on a CPU (models/allocator.py, bench/results/engine-overhead-cpu.md)."""

from __future__ import annotations

import os
import time

from dpiqa.engine.executor.base import UnitWorker
from dpiqa.engine.executor.ray_actors import RayExecutor


class EnvWorker(UnitWorker):
    """Answers each unit with its process's setting, read on the unit's thread."""

    label = "env"

    def __call__(self, unit: dict) -> dict:
        return {"MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX")}


def test_a_ray_worker_process_starts_with_one_malloc_arena(ray_local):
    import sys

    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/
    pool = RayExecutor().pool(EnvWorker(), 1, 1)
    try:
        deadline = time.monotonic() + 120
        while not pool.ready(0):
            assert time.monotonic() < deadline, "the worker did not start in 120 s"
            time.sleep(0.1)
        ticket = pool.submit(0, {"url": "u", "name": "n"})
        assert pool.wait([ticket], timeout=60) == [ticket]
        assert pool.result(ticket) == {"MALLOC_ARENA_MAX": "1"}
        assert "MALLOC_ARENA_MAX" not in os.environ  # the driver's own environment is left as it was
    finally:
        pool.close()
