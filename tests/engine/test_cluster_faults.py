"""Faults on several Ray nodes on one machine (`ray.cluster_utils.Cluster`): a worker node killed in the
middle of `score`. (A training worker killed in the middle of `distill`: tests/engine/training.)"""

from __future__ import annotations

import threading
import time

import corpus
import pytest
from background import capture
from test_pipeline import read_rows

from dpiqa.engine.executor.local import LocalExecutor
from dpiqa.engine.executor.ray_actors import RayExecutor
from dpiqa.engine.pipeline import ScoreConfig, run_score

MODEL = "dpiqa-student-tiny"


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


@pytest.mark.slow  # a four-node cluster on one machine, and a node killed: `make test` and CI run it (RUN_SLOW=1)
def test_a_worker_node_killed_mid_score_costs_only_its_own_units(cluster, tmp_path, monkeypatch):
    """Three worker nodes with one scoring worker each (two shards in flight per worker), 64 shards; one node
    is killed mid-run. The run goes on and ends in one command with the rows of a clean run; only the units
    in flight on the killed node ran again, and the manifest says how many."""
    shards = tmp_path / "shards"
    shards.mkdir()
    corpus.write_corpus(shards, shards=64, per_shard=3)
    clean = run_score(ScoreConfig(input=str(shards), output=str(tmp_path / "clean"), model=MODEL), LocalExecutor())
    assert clean.exit_code == 0

    # Each unit takes a quarter of a second more (the product's own failpoint, in the workers' environment):
    # the run lasts long enough to be cut mid-way on a machine of any speed.
    monkeypatch.setenv("DPIQA_FAILPOINTS", "unit.start=sleep:0.25")
    nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
    cluster.wait_for_nodes()
    out = tmp_path / "faulty"
    result: dict = {}

    def score() -> None:
        result["r"] = run_score(
            ScoreConfig(input=str(shards), output=str(out), model=MODEL, actors=3, units_per_worker=2),
            RayExecutor(address=cluster.address),
        )

    runner = threading.Thread(target=capture(score, result))
    runner.start()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and runner.is_alive() and len(list(out.glob("_done/*.json"))) < 12:
        time.sleep(0.05)
    done_at_kill = len(list(out.glob("_done/*.json")))
    cluster.remove_node(nodes[1], allow_graceful=False)  # every process on that node dies at once
    runner.join(timeout=400)
    assert not runner.is_alive(), "the run did not end after the node was lost"
    if "error" in result:
        raise result["error"]
    assert 0 < done_at_kill < 64, f"the kill landed after {done_at_kill} of 64 shards: not mid-run"
    r = result["r"]
    assert r.exit_code == 0, r.failed
    retries = r.manifest["retries"]
    assert retries["workers_lost"] == 1, retries
    # Only the units that were on the lost node ran again (two at most: two in flight per worker).
    assert 1 <= retries["units_started_again"] == retries["units_in_flight_on_lost_workers"] <= 2, retries
    a, b = read_rows(str(tmp_path / "clean")), read_rows(str(out))
    assert len(b) == 64 * 3 == len({(x["shard"], x["index"]) for x in b})
    assert [(x["shard"], x["index"], x["key"], x["status"]) for x in a] == [
        (x["shard"], x["index"], x["key"], x["status"]) for x in b
    ]
    assert [x["score"] for x in a] == pytest.approx([x["score"] for x in b], rel=1e-5)
