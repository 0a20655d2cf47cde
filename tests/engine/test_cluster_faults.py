"""Faults on several Ray nodes on one machine (`ray.cluster_utils.Cluster`): a worker node killed in the
middle of `score`. (A training worker killed in the middle of `distill`: tests/engine/training.)"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import corpus
import pytest
import torch
from background import capture
from test_pipeline import read_rows

from dpiqa.engine.executor.local import LocalExecutor
from dpiqa.engine.executor.ray_data import RayDataExecutor
from dpiqa.engine.pipeline import ScoreConfig, run_score
from dpiqa.models.run_options import RunOptions
from dpiqa.models.student import DPIQAStudent, StudentConfig


@pytest.fixture
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    from dpiqa.engine.executor.ray_data import init_ray

    session = ray.is_initialized()  # the session's local Ray (`ray_local`), given back afterwards
    if session:
        ray.shutdown()
    # The head has no CPU: every task and actor that does work runs on the worker nodes, so killing the one
    # that runs them always costs the run an attempt (with a CPU on the head, the rest of a run could sit
    # there and the kill hit nothing: a flaky "did not cost an attempt").
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    ray.init(address=c.address)
    yield c
    ray.shutdown()
    c.shutdown()
    if session:
        init_ray(num_cpus=2, for_training=True)  # as `ray_local` started it


def student_checkpoint(path: Path) -> str:
    torch.manual_seed(0)
    DPIQAStudent(StudentConfig(backbone="efficientnet_b0", image_size=96, map_size=16, head_hidden=64)).save_pretrained(
        str(path)
    )
    return str(path)


@pytest.mark.slow  # a SIGKILL and a rerun: `make test` and CI run it (RUN_SLOW=1)
def test_worker_node_killed_mid_score_loses_and_duplicates_nothing(cluster, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    corpus.write_corpus(shards, shards=10, per_shard=24)
    model = student_checkpoint(tmp_path / "model")
    clean = run_score(
        ScoreConfig(input=str(shards), output=str(tmp_path / "clean"), model=model, run=RunOptions(threads=1)),
        LocalExecutor(),
    )
    assert clean.exit_code == 0

    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    out = tmp_path / "faulty"
    result: dict = {}

    def score() -> None:
        result["r"] = run_score(
            ScoreConfig(
                input=str(shards), output=str(out), model=model, run=RunOptions(threads=1), batch_size=8, chunk_size=8
            ),
            RayDataExecutor(address=cluster.address),
        )

    runner = threading.Thread(target=capture(score, result))
    runner.start()
    deadline = time.monotonic() + 240
    while (
        time.monotonic() < deadline
        and runner.is_alive()
        and not ((out / "_done").exists() and list((out / "_done").glob("*.json")))
    ):
        time.sleep(0.05)
    done_at_kill = len(list((out / "_done").glob("*.json"))) if (out / "_done").exists() else 0
    cluster.remove_node(worker, allow_graceful=False)  # every process on that node dies at once
    cluster.add_node(num_cpus=2)
    runner.join(timeout=400)
    assert not runner.is_alive(), "the run did not end after the node was lost"
    if "error" in result:
        raise result["error"]
    assert 0 < done_at_kill < 10, f"the kill landed after {done_at_kill} of 10 shards: not mid-run"
    r = result["r"]
    assert r.exit_code == 0, r.failed
    assert r.manifest["attempts"] >= 2, "the lost node did not cost an attempt: was anything on it?"
    a, b = read_rows(str(tmp_path / "clean")), read_rows(str(out))
    assert len(b) == 240 and len({(x["shard"], x["index"]) for x in b}) == 240
    assert [(x["shard"], x["index"], x["key"], x["status"]) for x in a] == [
        (x["shard"], x["index"], x["key"], x["status"]) for x in b
    ]
    assert [x["score"] for x in a] == pytest.approx([x["score"] for x in b], rel=1e-5)
