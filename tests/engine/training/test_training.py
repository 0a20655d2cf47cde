"""`train-teacher`, `distill` and `eval` on a real local Ray (Ray Train + Ray Data) with the module's tiny
teacher: its card, eval, distillation from it, a killed and resumed run, one and two workers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from clirun import dpiqa
from corpus import graded_table
from tiny_training import tiny_teacher, weights

from dpiqa import models

REPO = Path(__file__).resolve().parents[3]


def cli(*args: str, cwd: Path | None = None):  # clirun.Result
    """The job in this process on the session's Ray (`ray_local`), not a subprocess with a Ray of its own."""
    return dpiqa(*args)


COMMON = ["--dataset", "csv", "--batch-size", "8", "--threads", "1"]


def teacher_recipe(table: Path) -> list[str]:
    """The module's teacher: trained once by `trained`, and again (killed, resumed, with 2 workers) by the tests
    that compare their run with it."""
    return [*tiny_teacher(table), "--epochs", "4"]


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
    # (this process's own lines: the actors' progress lines reach it through Ray's asynchronous log forwarding)
    assert re.search(r"distill: the teacher's outputs: 33 images in [\d.]+s \([\d.]+ images/s\)", out.stderr)
    assert re.search(r"distill: the training set's backbone features: 33 images in ", out.stderr), out.stderr
    card = json.loads((d / "student" / "card.json").read_text())
    assert card["architecture"] == "dpiqa-student"
    assert card["training"]["teacher"]["checkpoint_hash"] == models.describe(str(d / "teacher")).checkpoint_hash
    assert card["training"]["protocol"]["distill_mode"] == "feature" and card["training"]["protocol"]["lr"] == 1e-4
    assert card["training"]["pretrained_backbone"] == "none: random initialisation (--no-pretrained)"
    assert card["metrics"]["test"]["n"] == 10


def test_distill_needs_a_teacher_or_mode_none(trained):
    d, table = trained
    out = cli(
        "distill", *COMMON, "--root", str(table), "--config", "dpiqa-student-tiny", "--output", str(d / "x"), cwd=d
    )
    assert out.returncode == 2 and "--teacher" in out.stderr and "Traceback" not in out.stderr


def test_distill_at_scale_from_shards_and_the_teachers_maps(trained, tmp_path):
    """`score --write-maps` with the teacher over shards, then `distill --input --teacher-outputs`:
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
        "--input",
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
    a, b = weights(d / "teacher"), weights(out)
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


def test_one_and_eight_workers_follow_one_recipe(trained, tmp_path):
    """`--batch-size` is the global batch: 1 and 2 workers take the same optimizer steps over the same global
    batches, report the same epoch losses (each the mean of its steps' losses over the global batch) and end
    at the same weights. The tiny teacher has no BatchNorm, so what differs is only the order of float sums
    in DDP's all-reduce: the two runs' weights differ by under 5 % of how far training moved them (measured:
    1.5e-8 against 4.0e-5), so a run whose workers do not train (weights left at initialisation) fails."""
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
    losses = {w: [h["train_loss"] for h in card["history"]] for w, card in cards.items()}
    assert len(losses[1]) == 4 and losses[2] == pytest.approx(losses[1], rel=1e-5, abs=0)
    a, b, initial = weights(d / "teacher"), weights(out), _initial_teacher()
    assert a.keys() == b.keys() == initial.keys()
    moved = max(float((a[k] - initial[k]).abs().max()) for k in a)  # how far training took the weights
    apart = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert moved > 1e-5 and apart < 0.05 * moved, (moved, apart)


def _initial_teacher() -> dict[str, torch.Tensor]:
    from dpiqa.engine.training.model import ModelSpec, build_model

    torch.manual_seed(0)  # as the workers build it
    return build_model(ModelSpec(kind="teacher", config="dpiqa-teacher-tiny", random_prior=True), 100.0).state_dict()
