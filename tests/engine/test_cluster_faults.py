"""Faults on several Ray nodes on one machine (`ray.cluster_utils.Cluster`): a worker node killed in the
middle of `score`, and a training worker killed in the middle of `distill`."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import corpus
import pytest
import torch
from corpus import graded_table
from test_pipeline import read_rows

from dpiqa import models
from dpiqa.engine.executor.local import LocalExecutor
from dpiqa.engine.executor.ray_data import RayDataExecutor
from dpiqa.engine.pipeline import ScoreConfig, run_score
from dpiqa.models.run_options import RunOptions
from dpiqa.models.student import DPIQAStudent, StudentConfig


@pytest.fixture
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    ray.init(address=c.address)
    yield c
    ray.shutdown()
    c.shutdown()


def capture(fn, result: dict):  # noqa: ANN001, ANN201
    """`fn` for a thread: an exception it raises is kept in `result["error"]`, for the test to raise."""

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test's thread
            result["error"] = exc

    return run


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


@pytest.mark.slow  # a SIGKILL and a rerun: `make test` and CI run it (RUN_SLOW=1)
def test_training_worker_killed_mid_distill_resumes_from_its_checkpoint(ray_local, tmp_path):
    import ray

    from dpiqa.engine.splits import SplitConfig
    from dpiqa.engine.training.model import ModelSpec
    from dpiqa.engine.training.run import TrainConfig, TrainRun, run_training

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False)
    # enough images that an epoch takes a second or more: the kill must land while the workers train
    table = graded_table(tmp_path, n=160, seed=3)

    def config(out: str) -> TrainConfig:
        return TrainConfig(
            job="distill",
            output=out,
            model=ModelSpec(kind="student", config="dpiqa-student-tiny", pretrained_backbone=False),
            dataset="csv",
            root=str(table),
            split=SplitConfig(n_splits=1),
            distill_mode="none",
            epochs=6,
            batch_size=8,
            run=TrainRun(threads=1, max_failures=2),
        )

    run_training(config(str(tmp_path / "clean")))
    out = tmp_path / "killed"
    result: dict = {}
    thread = threading.Thread(target=capture(lambda: run_training(config(str(out))), result))
    started = time.time()
    thread.start()
    deadline = time.monotonic() + 300

    def recorded() -> int:
        """Checkpoints Ray Train's controller has recorded (a worker's report counts once the controller has
        taken it: a worker killed before that resumes from the one before)."""
        snapshots = list(out.glob("_train/*/checkpoint_manager_snapshot.json"))
        try:
            return len(json.loads(snapshots[0].read_text())["checkpoint_results"]) if snapshots else 0
        except (ValueError, KeyError):  # being written
            return 0

    while time.monotonic() < deadline and thread.is_alive() and recorded() < 2:
        time.sleep(0.05)
    assert thread.is_alive() and not (out / "card.json").exists(), "the run ended before its worker was killed"
    import psutil
    from ray._private import worker as ray_worker

    # Ray names its worker processes after the actor they host (`ray::RayTrainWorker...`); only this
    # session's raylet's children are ours (other Ray instances may run on the machine).
    raylet = ray_worker._global_node.all_processes["raylet"][0].process.pid
    workers = [
        p
        for p in psutil.Process(raylet).children(recursive=True)
        # started by this run: the clean run's workers may linger a moment under the same name
        if p.cmdline() and p.cmdline()[0].startswith("ray::RayTrainWorker") and p.create_time() >= started - 1
    ]
    assert workers, "no training worker to kill"
    os.kill(workers[0].pid, signal.SIGKILL)
    thread.join(timeout=400)
    assert not thread.is_alive()
    if "error" in result:
        raise result["error"]
    card = json.loads((out / "card.json").read_text())
    # the workers that finished had resumed from a checkpoint (not from epoch 0) ...
    assert 1 <= card["training"]["resumed_at_epoch"] <= 5, card["training"]["resumed_at_epoch"]
    # ... and ended where the uninterrupted run did
    a, b = models.load_model(str(tmp_path / "clean")).state_dict(), models.load_model(str(out)).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
