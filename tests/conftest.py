"""Shared fixtures: a sealed-off environment, a local Ray, an S3 server on loopback, tiny shards."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

# Nothing may leave this machine: no Ray usage reports, no cloud metadata probes, dummy credentials.
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# One torch/OpenMP thread per process (Ray workers inherit it): with more threads than free cores,
# OpenMP's spin-waiting makes a busy 2-core machine crawl, and the test models are tiny.
os.environ["OMP_NUM_THREADS"] = "1"
# Ray Train's controller polls its workers every 2 s by default, so each run's end is noticed up to 2 s late;
# the tests' runs are seconds long (Ray Train propagates this to its controller).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")

import sys

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/corpus.py, shared builders

REPO = Path(__file__).resolve().parent.parent
AGIQA = REPO.parent / "shared" / "datasets" / "agiqa3k"


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["DPIQA_CACHE"] = str(tmp_path_factory.mktemp("dpiqa-cache"))


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, shared by the tests of a session."""
    import ray

    from dpiqa.engine.executor.ray_data import init_ray

    init_ray(num_cpus=2, for_training=True)  # as the jobs start it (a no-op when Ray already runs)
    yield ray
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto's server mode) on loopback; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server: str):
    """A fresh bucket on the loopback S3 server; yields `(bucket, storage_options)` for s3fs."""
    import uuid

    import boto3

    bucket = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    options = {"client_kwargs": {"endpoint_url": s3_server}, "key": "testing", "secret": "testing"}
    yield bucket, options


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_slow = pytest.mark.skip(reason="slow: set RUN_SLOW=1")
    skip_agiqa = pytest.mark.skip(reason=f"needs {AGIQA}")
    skip_extra = pytest.mark.skip(reason="an extra check: set RUN_EXTRA=1 (make test-extra)")
    # Modules with a `slow` test (Ray Train runs, SIGKILLs and reruns: a minute or more each) first: pytest-xdist
    # hands modules out in this order, and a long module handed out last makes one worker end minutes after the
    # other. The order within a module is kept.
    slow_modules = {item.module.__name__ for item in items if "slow" in item.keywords and item.module is not None}
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (getattr(item.module, "__name__", "") not in slow_modules, order[id(item)]))
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not os.environ.get("RUN_SLOW"):
            item.add_marker(skip_slow)
        if "agiqa" in item.keywords and not AGIQA.exists():
            item.add_marker(skip_agiqa)
        if "extra" in item.keywords and not os.environ.get("RUN_EXTRA"):
            item.add_marker(skip_extra)
