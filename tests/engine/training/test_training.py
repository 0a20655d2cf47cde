"""`train-teacher`, `distill` and `eval` on a real local Ray (Ray Train + Ray Data), tiny models."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from background import capture
from clirun import dpiqa
from corpus import graded_table
from recipes import tiny_student

from dpiqa import models

REPO = Path(__file__).resolve().parents[3]


def cli(*args: str, cwd: Path | None = None):  # noqa: ANN201 - clirun.Result
    """The job in this process on the session's Ray (`ray_local`), not a subprocess with a Ray of its own."""
    return dpiqa(*args)


COMMON = ["--dataset", "csv", "--batch-size", "8", "--threads", "1"]


def teacher_recipe(table: Path) -> list[str]:
    """The module's teacher: trained once by `trained`, and again (killed, resumed, with 2 workers) by the tests
    that compare their run with it."""
    return [
        "train-teacher",
        *COMMON,
        "--root",
        str(table),
        "--config",
        "dpiqa-teacher-tiny",
        "--random-prior",
        "--epochs",
        "4",
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_local):
    d = tmp_path_factory.mktemp("train")
    table = graded_table(d)
    out = cli(*teacher_recipe(table), "--output", str(d / "teacher"), cwd=d)
    assert out.returncode == 0, out.stderr[-3000:]
    return d, table


def test_teacher_card_records_protocol_split_and_test_metrics(trained):
    d, table = trained
    card = json.loads((d / "teacher" / "card.json").read_text())
    t = card["training"]
    assert t["job"] == "train-teacher" and t["dataset"] == "csv" and t["seed"] == 0
    assert t["protocol"]["optimizer"] == "Adam" and t["protocol"]["lr"] == 1e-5 and t["protocol"]["epochs"] == 4
    assert t["protocol"]["name"] == "ours" and t["protocol"]["selection"] == "best validation SRCC"
    assert t["protocol"]["batch_size"] == 8 and t["protocol"]["batch_per_worker"] == 8
    assert t["protocol"]["precision"] == "fp32"  # auto on a CPU, resolved
    assert t["steps"] == 4 * (33 // 8)  # whole global batches of the 33 training images, 4 epochs
    assert t["prior"].startswith("random prior")
    assert t["split"]["sizes"] == {"train": 33, "val": 5, "test": 10}  # 48 at 70/10/20: val 4.8, test 9.6 rounded
    assert card["metrics"]["test"]["n"] == 10 and -1 <= card["metrics"]["test"]["srcc"] <= 1
    assert card["mos_scale"] == 100.0 and card["sha256"] == models.describe(str(d / "teacher")).checkpoint_hash


def test_eval_reproduces_the_cards_test_metrics(trained):
    d, table = trained
    out = cli(
        "eval",
        "--model",
        str(d / "teacher"),
        "--dataset",
        "csv",
        "--root",
        str(table),
        "--json",
        "--device",
        "cpu",
        cwd=d,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    card = json.loads((d / "teacher" / "card.json").read_text())
    assert result["split"] == {"part": "test", "seed": 0, "fractions": [0.7, 0.1, 0.2], "grouped": False}
    for key in ("srcc", "krcc", "plcc", "plcc_logistic", "rmse", "n"):
        assert result["metrics"][key] == pytest.approx(card["metrics"]["test"][key], rel=1e-6, abs=1e-9)
    every = json.loads(
        cli(
            "eval",
            "--model",
            str(d / "teacher"),
            "--dataset",
            "csv",
            "--root",
            str(table),
            "--split",
            "all",
            "--json",
            "--device",
            "cpu",
            cwd=d,
        ).stdout
    )
    assert every["metrics"]["n"] == 48


def test_distill_from_the_teacher_on_the_labelled_set(trained):
    d, table = trained
    out = cli(
        "distill",
        *COMMON,
        "--root",
        str(table),
        "--teacher",
        str(d / "teacher"),
        "--config",
        "dpiqa-student-tiny",
        "--no-pretrained",
        "--set",
        "freeze_backbone=true",
        "--epochs",
        "2",
        "--output",
        str(d / "student"),
        cwd=d,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # A frozen backbone's features are computed once, after the teacher's outputs: the teacher's actor and the
    # feature actor had held both CPUs of the session's 2-CPU Ray at once, and the run hung without a line.
    assert "distill: backbone features: " in out.stderr
    card = json.loads((d / "student" / "card.json").read_text())
    assert card["architecture"] == "dpiqa-student"
    assert card["training"]["teacher"]["checkpoint_hash"] == models.describe(str(d / "teacher")).checkpoint_hash
    assert card["training"]["protocol"]["distill_mode"] == "feature" and card["training"]["protocol"]["lr"] == 1e-4
    assert card["training"]["pretrained_backbone"] == "none: random initialisation (--no-pretrained)"
    assert card["metrics"]["test"]["n"] == 10
    # the teacher's pass over the training images shows progress, not minutes of silence
    assert "distill: teacher outputs: " in out.stderr and "images/s" in out.stderr


def test_distill_needs_a_teacher_or_mode_none(trained):
    d, table = trained
    out = cli(
        "distill", *COMMON, "--root", str(table), "--config", "dpiqa-student-tiny", "--output", str(d / "x"), cwd=d
    )
    assert out.returncode == 2 and "--teacher" in out.stderr and "Traceback" not in out.stderr


def test_distill_at_scale_from_shards_and_the_teachers_maps(trained, tmp_path):
    """`score --write-maps` with the teacher over shards, then `distill --shards --teacher-outputs`:
    labels are used where the shard's .json has one, teacher maps everywhere the teacher scored."""
    import corpus

    d, _ = trained
    samples = []
    for i in range(24):
        members = {"jpg": corpus.jpeg(i, size=(40, 40))}
        if i % 3 == 0:
            members["json"] = json.dumps({"mos": float(i * 4)}).encode()
        samples.append((f"k{i:03d}", members))
    samples.append(("broken", {"jpg": b"not a jpeg"}))  # the teacher cannot score it and it has no label
    shards = tmp_path / "shards"
    shards.mkdir()
    corpus.write_shard(shards / "00000.tar", samples[:13])
    corpus.write_shard(shards / "00001.tar", samples[13:])
    score = cli(
        "score",
        "--input",
        str(shards),
        "--output",
        str(tmp_path / "teacher-out"),
        "--model",
        str(d / "teacher"),
        "--write-maps",
        "--executor",
        "local",
        cwd=tmp_path,
    )
    assert score.returncode == 0, score.stderr[-2000:]
    import pyarrow.parquet as pq

    maps = pq.read_table(tmp_path / "teacher-out" / "maps" / "00000.parquet")
    assert maps.num_rows == 13 and len(maps.column("map")[0].as_py()) == 8 * 16 * 16 * 2  # float16 8x16x16

    out = cli(
        "distill",
        "--shards",
        str(shards),
        "--teacher-outputs",
        str(tmp_path / "teacher-out"),
        "--config",
        "dpiqa-student-tiny",
        "--no-pretrained",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--threads",
        "1",
        "--output",
        str(tmp_path / "student"),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    card = json.loads((tmp_path / "student" / "card.json").read_text())
    assert card["training"]["shards"] == str(shards) and card["mos_scale"] == 100.0
    assert card["training"]["images_per_epoch"] == 24  # every sample with a label or a teacher map; not "broken"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return models.load_model(str(path)).state_dict()


@pytest.mark.slow  # a SIGKILL and a rerun: `make test` and CI run it (RUN_SLOW=1)
def test_killed_training_resumes_and_ends_where_an_uninterrupted_run_does(trained, tmp_path):
    """The module's teacher is the uninterrupted run; the same command in a process of its own (one worker:
    the loop runs in that process, `--executor auto`) is SIGKILLed with its Ray after two epochs'
    checkpoints, then rerun here: it resumes from the last one and ends at the same weights."""
    d, table = trained
    args = teacher_recipe(table)
    out = tmp_path / "killed"

    def complete() -> list[Path]:  # an epoch's folder is complete once its metrics are written, last
        return [p for p in out.glob("_train/*/local/epoch-*") if (p / "metrics.json").exists()]

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpiqa.jobs.cli", *args, "--output", str(out)],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if len(complete()) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "card.json").exists(), "the run finished before it could be killed"
    assert len(complete()) >= 2

    resumed = cli(*args, "--output", str(out), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after epoch" in resumed.stderr
    a, b = _weights(d / "teacher"), _weights(out)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    card_a = json.loads((d / "teacher" / "card.json").read_text())
    card_b = json.loads((out / "card.json").read_text())
    assert card_a["training"]["resumed_at_epoch"] == 0 and card_b["training"]["resumed_at_epoch"] >= 1
    assert card_a["training"]["executor"] == card_b["training"]["executor"] == "local"
    # the resumed run's history holds the epochs before the kill too, with the losses the clean run had
    loss_a = [h["train_loss"] for h in card_a["training"]["history"]]
    loss_b = [h["train_loss"] for h in card_b["training"]["history"]]
    assert len(loss_a) == len(loss_b) == 4 and loss_b == pytest.approx(loss_a, rel=1e-5)
    assert card_a["training"]["best_epoch"] == card_b["training"]["best_epoch"]
    assert card_a["metrics"]["test"]["srcc"] == pytest.approx(card_b["metrics"]["test"]["srcc"], abs=1e-6)


def test_frozen_backbone_trains_on_cached_features_exactly_as_on_images(ray_local, tmp_path):
    """The head of a frozen backbone trained on features computed once ends where training on images ends,
    up to float noise: the features are computed at another batch size than the loop's (last-bit
    differences), and Adam turns noise in near-zero gradients into steps of up to its learning rate (1e-4
    here), so the bound is a few such steps (1e-3): it checks that both paths train the same head, not
    bit-equality; the loss histories check that the head saw the same features."""
    from dpiqa.engine.training.run import run_training

    table = graded_table(tmp_path, n=30, seed=5)
    outs, losses = {}, {}
    for cache in (True, False):
        out = str(tmp_path / f"cache-{cache}")
        recipe = tiny_student(
            table,
            out,
            epochs=2,
            overrides={"freeze_backbone": True},
            cache_features=cache,
        )
        run_training(recipe)
        outs[cache] = models.load_model(out).state_dict()
        card = json.loads((Path(out) / "card.json").read_text())
        losses[cache] = [h["train_loss"] for h in card["training"]["history"]]
    for k in outs[True]:
        torch.testing.assert_close(outs[True][k], outs[False][k], rtol=0, atol=1e-3, msg=k)
    # The losses show that the head saw the same features (Adam's bounded steps alone would not: a head
    # trained on another backbone's features moves by as little): the feature actor builds the backbone
    # from the workers' seed.
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    from dpiqa.engine.training.model import build_model

    torch.manual_seed(0)  # as the workers build it: the frozen backbone stays, the head moved
    spec = tiny_student(table, tmp_path, epochs=2, overrides={"freeze_backbone": True}).model  # the runs' model
    initial = build_model(spec, 100.0).state_dict()
    assert all(
        torch.equal(outs[True][k], initial[k])
        for k in initial
        if k.startswith("backbone.") and not k.endswith("num_batches_tracked")
    )
    assert not torch.equal(outs[True]["mlp.net.1.weight"], initial["mlp.net.1.weight"])


def test_one_and_eight_workers_follow_one_recipe(trained, tmp_path):
    """`--batch-size` is the global batch: 1 and 2 workers take the same optimizer steps over the same global
    batches and end at the same weights. The tiny teacher has no BatchNorm, so what differs is only the
    order of float sums in DDP's all-reduce; Adam can turn such noise in a near-zero gradient into a step of
    up to its learning rate, so the tolerance is lr x steps (1e-5 x 16)."""
    d, table = trained  # the 1-worker run: the module's teacher, trained with the same command
    out = tmp_path / "w2"
    two = cli(*teacher_recipe(table), "--workers", "2", "--output", str(out))
    assert two.returncode == 0, two.stderr[-3000:]
    # the log holds the job's lines only (its progress per epoch from the workers): not Ray Train's INFO lines,
    # Ray Data's per-dataset lines or warnings about read-only batches
    ours = re.compile(
        r"((\x1b\[\d+m)?\(RayTrainWorker pid=\d+[^)]*\)(\x1b\[0m)? epoch \d+/4: |\d\d:\d\d:\d\d INFO dpiqa)"
    )
    assert "epoch 4/4: train loss" in two.stderr  # the workers' lines reach this log
    assert not [line for line in two.stderr.splitlines() if not ours.match(line)], two.stderr[-3000:]
    cards = {w: json.loads((p / "card.json").read_text())["training"] for w, p in ((1, d / "teacher"), (2, out))}
    assert cards[1]["identity"] == cards[2]["identity"]  # one recipe: the workers are not part of it
    assert cards[1]["steps"] == cards[2]["steps"] == 4 * (33 // 8)  # 48 images at 70/10/20: 33 train
    assert cards[2]["protocol"]["batch_size"] == 8 and cards[2]["protocol"]["batch_per_worker"] == 4
    a, b, initial = _weights(d / "teacher"), _weights(out), _initial_teacher()
    assert [k for k in a if not torch.equal(a[k], initial[k])]  # training changed the weights
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1.6e-4, msg=k)


def _initial_teacher() -> dict[str, torch.Tensor]:
    from dpiqa.engine.training.model import ModelSpec, build_model

    torch.manual_seed(0)  # as the workers build it
    return build_model(ModelSpec(kind="teacher", config="dpiqa-teacher-tiny", random_prior=True), 100.0).state_dict()


def test_epoch_batches_shuffle_whole_per_epoch_and_split_global_batches(ray_local):
    """Every epoch a different seeded permutation of all rows (not a local buffer over file order), the same
    for the same (seed, epoch) on every run, and each worker's slice of a global batch is disjoint."""
    import numpy as np
    import ray

    from dpiqa.engine.training.data import EpochBatches

    ds = ray.data.from_items([{"i": i, "target": float(i)} for i in range(100)], override_num_blocks=7).materialize()
    batches = EpochBatches(ds, ["i", "target"])
    assert len(batches) == 100 and batches.steps(16) == 6

    def epoch(e: int, world: int = 1, seed: int = 3) -> list[list[int]]:
        parts = [list(batches.batches(e, seed, 16, r, world)) for r in range(world)]
        return [sorted(int(x) for p in step for x in p["i"]) for step in zip(*parts, strict=True)]

    first, second = epoch(0), epoch(1)
    assert first != second and epoch(0) == first  # reshuffled per epoch, reproducible
    assert max(first[0]) > 50  # drawn from the whole set, not from the first rows
    assert len({x for step in first for x in step}) == 96  # 6 whole batches, no row twice
    assert epoch(0, world=2) == first and epoch(1, world=4) == second  # the same global batches at any scale
    rows = list(batches.batches(0, 3, 16, 1, 2))
    assert all(len(b["i"]) == 8 and np.array_equal(b["target"], b["i"].astype(float)) for b in rows)


def test_bad_recipes_stop_before_ray_starts(tmp_path, capsys):
    """A global batch that does not divide among the workers, a missing dataset file, a teacher without its
    prior: one line, exit 2 or 4 (dpiqa/errors.py), before any Ray start-up (seconds, not a minute)."""
    from dpiqa.jobs.cli import main

    table = graded_table(tmp_path, n=12)
    t0 = time.monotonic()
    cases = [
        (
            [
                "train-teacher",
                "--dataset",
                "csv",
                "--root",
                str(table),
                "--config",
                "dpiqa-teacher-tiny",
                "--random-prior",
                "--batch-size",
                "10",
                "--workers",
                "4",
            ],
            "--batch-size 10 is the global batch and must divide evenly",
            2,
        ),
        (
            [
                "train-teacher",
                "--dataset",
                "csv",
                "--root",
                str(tmp_path / "missing.csv"),
                "--config",
                "dpiqa-teacher-tiny",
                "--random-prior",
            ],
            "missing.csv",
            4,
        ),
        (
            ["train-teacher", "--dataset", "csv", "--root", str(table), "--config", "dpiqa-teacher-tiny"],
            "train-teacher needs the diffusion prior: --sd",
            2,
        ),
        (
            ["distill", "--dataset", "csv", "--root", str(table), "--config", "dpiqa-student-tiny", "--mode", "none"],
            "timm's pretrained test_efficientnet",
            4,
        ),
        (
            [
                "train-teacher",
                "--dataset",
                "csv",
                "--root",
                str(table),
                "--protocol",
                "paper",
                "--fractions",
                "0.7,0.1,0.2",
                "--random-prior",
            ],
            "--protocol paper has no validation part",
            2,
        ),
        (
            [
                "train-teacher",
                "--dataset",
                "csv",
                "--root",
                str(table),
                "--config",
                "dpiqa-teacher-tiny",
                "--random-prior",
                "--workers",
                "2",
                "--executor",
                "local",
            ],
            "--executor local runs one worker in this process; --workers 2 needs --executor ray",
            2,
        ),
    ]
    import ray

    was_running = ray.is_initialized()
    for argv, says, status in cases:  # 2: the options can never work; 4: a file or weights it met
        code = main([*argv, "--output", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == status and says in err.strip().splitlines()[-1], err
        assert "--no-pretrained" in err or "distill" not in argv[0]
    assert ray.is_initialized() == was_running and time.monotonic() - t0 < 60


def test_paper_protocol_trains_to_the_last_epoch_on_80_20(ray_local, tmp_path, capsys):
    from dpiqa.jobs.cli import main

    table = graded_table(tmp_path, n=30, seed=4)
    code = main(
        [
            "train-teacher",
            *COMMON,
            "--root",
            str(table),
            "--config",
            "dpiqa-teacher-tiny",
            "--random-prior",
            "--protocol",
            "paper",
            "--splits",
            "1",
            "--epochs",
            "3",
            "--output",
            str(tmp_path / "t"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "protocol paper: epoch chosen by last epoch" in out
    t = json.loads((tmp_path / "t" / "card.json").read_text())["training"]
    assert t["split"]["sizes"] == {"train": 24, "val": 0, "test": 6} and t["split"]["fractions"] == [0.8, 0.0, 0.2]
    assert t["protocol"]["name"] == "paper" and t["protocol"]["selection"] == "last epoch" and t["best_epoch"] == 2


def student_recipe(table: Path, out: Path, max_failures: int = 0, executor: str = "auto"):  # noqa: ANN201
    """A tiny student from scratch on the graded fixture (labels only): `learned` trains it once (in this
    process); the killed-distill test trains it again on Ray Train's workers and compares."""
    from dpiqa.engine.training.run import TrainRun

    # how it runs (TrainRun: failures, executor) is outside the recipe's identity
    return tiny_student(
        table, out, epochs=6, lr=1e-3, run=TrainRun(threads=1, max_failures=max_failures, executor=executor)
    )


@pytest.fixture(scope="module")
def learned(tmp_path_factory, ray_local):
    from dpiqa.engine.training.run import run_training

    d = tmp_path_factory.mktemp("learn")
    # 160 images: enough that an epoch takes a second or more, for the kill to land while workers train
    table = graded_table(d, n=160, seed=3)
    run_training(student_recipe(table, d / "student"))
    return d, table


def test_a_student_learns_the_graded_fixture(learned):
    """Quality is the inverse of the noise level in `graded_table`: a tiny student from scratch must learn it.
    An untrained model's SRCC on 32 test images is ~0 (|SRCC| > 0.6 by chance: p < 0.001); this one's loss
    must fall to under half its first epoch's and its test SRCC pass 0.6."""
    d, _ = learned
    card = json.loads((d / "student" / "card.json").read_text())
    history = card["training"]["history"]
    assert [h["epoch"] for h in history] == list(range(6))
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert card["metrics"]["test"]["n"] == 32 and card["metrics"]["test"]["srcc"] > 0.6


@pytest.mark.slow  # a SIGKILL and a rerun: `make test` and CI run it (RUN_SLOW=1)
def test_training_worker_killed_mid_distill_resumes_from_its_checkpoint(learned, tmp_path):
    """A Ray Train worker SIGKILLed after the controller has recorded two checkpoints: Ray Train restarts the
    worker group, which resumes from the last checkpoint (not epoch 0) and ends at the weights of the
    uninterrupted run (`learned`, whose loop ran in this process: the two executors train alike)."""
    import psutil
    from ray._private import worker as ray_worker

    from dpiqa.engine.training.run import run_training

    d, table = learned
    out = tmp_path / "killed"
    result: dict = {}
    thread = threading.Thread(target=capture(lambda: run_training(student_recipe(table, out, 2, "ray")), result))
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
    # Ray names its worker processes after the actor they host (`ray::RayTrainWorker...`); only this
    # session's raylet's children are ours (other Ray instances may run on the machine).
    raylet = ray_worker._global_node.all_processes["raylet"][0].process.pid
    workers = [
        p
        for p in psutil.Process(raylet).children(recursive=True)
        # started by this run: an earlier run's workers may linger a moment under the same name
        if p.cmdline() and p.cmdline()[0].startswith("ray::RayTrainWorker") and p.create_time() >= started - 1
    ]
    assert workers, "no training worker to kill"
    os.kill(workers[0].pid, signal.SIGKILL)
    thread.join(timeout=400)
    assert not thread.is_alive()
    if "error" in result:
        raise result["error"]
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["executor"] == "ray"
    assert json.loads((d / "student" / "card.json").read_text())["training"]["executor"] == "local"
    # the workers that finished had resumed from a checkpoint (not from epoch 0) ...
    assert 1 <= card["training"]["resumed_at_epoch"] <= 5, card["training"]["resumed_at_epoch"]
    # ... and ended where the uninterrupted run did
    a, b = _weights(d / "student"), _weights(out)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
