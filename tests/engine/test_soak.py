"""A seeded soak: `dpiqa score` over ~100 shards on S3 behind a fault proxy (about 5 % of requests throttled
or cut), with scoring workers and the driver SIGKILLed at random moments, round after round; after each round
every sample is exactly one row and every marker's count is its Parquet's."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import corpus
import fsspec
import psutil
import pyarrow.parquet as pq
import pytest
from s3faults import FaultProxy

REPO = Path(__file__).resolve().parents[2]
# CI runs three rounds (each a run cut at a random moment and its reruns: ~4 minutes of the suite's 15);
# `make soak` runs ten (DPIQA_SOAK_ROUNDS), and so can a longer night.
SHARDS, PER_SHARD, ROUNDS = 96, 2, int(os.environ.get("DPIQA_SOAK_ROUNDS", "3"))


@pytest.fixture
def ray_head():
    """A Ray cluster of this test's own (`ray.cluster_utils.Cluster`: a head with 2 CPUs), which the drivers the
    test starts and kills connect to; this process does not connect."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    yield cluster
    cluster.shutdown()


def workers(cluster) -> list[psutil.Process]:
    """The scoring workers of this test's own cluster (descendants of its raylets: never another test's)."""
    out = []
    for node in cluster.list_all_nodes():
        for info in node.all_processes.get("raylet", []):
            try:
                out += [
                    p
                    for p in psutil.Process(info.process.pid).children(recursive=True)
                    if "_UnitActor" in " ".join(p.cmdline())
                ]
            except psutil.Error:
                pass
    return out


def check_output(fs, prefix: str) -> int:
    """Every marker's rows equal its Parquet's; no (shard, index) twice; returns the rows of marked shards."""
    seen, total = set(), 0
    try:
        markers = fs.ls(f"{prefix}/_done", detail=False)
    except FileNotFoundError:  # killed before its first marker
        markers = []
    for marker in markers:
        m = json.loads(fs.cat(marker))
        name = marker.rsplit("/", 1)[1][: -len(".json")]
        with fs.open(f"{prefix}/scores/{name}.parquet", "rb") as f:
            table = pq.read_table(f, columns=["shard", "index"])
        assert table.num_rows == m["rows"] == PER_SHARD, (name, table.num_rows, m["rows"])
        pairs = set(zip(table.column("shard").to_pylist(), table.column("index").to_pylist(), strict=True))
        assert not pairs & seen and len(pairs) == table.num_rows, f"{name}: duplicate rows"
        seen |= pairs
        total += table.num_rows
    return total


@pytest.mark.slow  # rounds of kills and reruns on a Ray of its own: `make test` and CI run it (RUN_SLOW=1)
@pytest.mark.timeout(1800)
def test_soak_random_kills_and_s3_faults_lose_and_duplicate_nothing(ray_head, s3, s3_server, tmp_path):
    rng = random.Random(20261207)
    bucket, options = s3
    fs = fsspec.filesystem("s3", **options)
    local = tmp_path / "shards"
    local.mkdir()
    one = corpus.shard_bytes(corpus.good_samples("k", PER_SHARD, seed=1))
    fs.pipe({f"{bucket}/shards/{i:05d}.tar": one for i in range(SHARDS)})
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DPIQA_FAILPOINTS": ""}
    kills = {"driver": 0, "worker": 0}
    with FaultProxy(s3_server, slowdown_every=20, drop_every=20, latency=0.0) as proxy:
        faulty = json.dumps({**options, "client_kwargs": {"endpoint_url": proxy.url}})
        for round_ in range(ROUNDS):
            out = f"s3://{bucket}/out{round_}"
            cmd = [sys.executable, "-m", "dpiqa.jobs.cli", "score", "--input", f"s3://{bucket}/shards/"]
            cmd += ["--output", out, "--model", "null", "--executor", "ray", "--address", ray_head.address]
            cmd += ["--workers", "2", "--storage-options", faulty]
            runs = 0
            while True:
                runs += 1
                assert runs <= 6, f"round {round_}: not finished after 5 runs"
                proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                if runs == 1:  # the first run of a round is cut: a worker, the driver, or both, at random moments
                    deadline = time.monotonic() + rng.uniform(3.0, 10.0)
                    victims = rng.choice([["worker"], ["driver"], ["worker", "driver"]])
                    for victim in victims:
                        while time.monotonic() < deadline and proc.poll() is None:
                            time.sleep(0.05)
                        if proc.poll() is not None:
                            break
                        if victim == "worker":
                            # a scoring worker once it has started (a slow start would otherwise spare it)
                            found = workers(ray_head)
                            while not found and proc.poll() is None:
                                time.sleep(0.1)
                                found = workers(ray_head)
                            if found:
                                time.sleep(rng.uniform(0.0, 1.5))
                                try:
                                    rng.choice(found).kill()
                                    kills["worker"] += 1
                                except psutil.NoSuchProcess:
                                    pass
                            deadline = time.monotonic() + rng.uniform(1.0, 4.0)
                        elif victim == "driver":
                            proc.kill()
                            kills["driver"] += 1
                try:
                    _, stderr = proc.communicate(timeout=240)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    _, stderr = proc.communicate()
                    pytest.fail(f"round {round_}, run {runs}: no end in 240 s:\n{stderr.decode()[-4000:]}")
                if proc.returncode == 0:
                    break
                assert proc.returncode == -signal.SIGKILL, stderr.decode()[-3000:]
                fs.invalidate_cache()
                check_output(fs, out.removeprefix("s3://"))  # what a killed run left is whole
            fs.invalidate_cache()
            assert check_output(fs, out.removeprefix("s3://")) == SHARDS * PER_SHARD, f"round {round_}"
            manifest = json.loads(fs.cat(f"{out.removeprefix('s3://')}/manifest.json"))
            assert manifest["shards"]["failed"] == 0
        injected = dict(proxy.injected)
    # every round's first run was cut, by each kind of kill in some round (the seed picks both within three)
    assert kills["driver"] + kills["worker"] >= ROUNDS and kills["driver"] >= 1 and kills["worker"] >= 1, kills
    assert injected["slowdown"] > 10 and injected["dropped"] > 0, injected
