"""The local Ray that the jobs start (`init_ray`), in a process of its own (the suite's Ray is another)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import os, ray
from dpiqa.engine.executor.ray_data import init_ray
init_ray(num_cpus=1, for_training=True)

@ray.remote
def address():
    return os.environ.get("RAY_ADDRESS")

print(ray.get(address.remote()), ray.get_runtime_context().gcs_address)
"""


def test_local_ray_workers_know_their_own_cluster():
    """Ray Train's placement-group cleaner finds the cluster by address: with two local Rays on one machine
    (the suite's and this one) a worker that auto-detects fails with "multiple active Ray instances"."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=180, check=True
    ).stdout.split()
    worker_sees, cluster = out[-2], out[-1]
    assert worker_sees == cluster
