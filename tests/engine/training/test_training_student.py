"""Student training and the recipe checks on a real local Ray: a student that must learn, Ray Train's worker
killed mid-distill, cached frozen-backbone features, epoch batches, the paper protocol, bad recipes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from background import capture
from corpus import graded_table
from tiny_training import tiny_student, tiny_teacher, weights

from dpiqa import models


def test_frozen_backbone_trains_on_cached_features_exactly_as_on_images(ray_local, tmp_path):
    """The head of a frozen backbone trained on features computed once ends where training on images ends,
    with the statistics the head reads beside the backbone (`nss+exposure+jpeg_grid`: the grid measured by the
    decoder before the resize reaches both paths alike), up to float noise: the features are computed at another batch size than the loop's (last-bit
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
            overrides={"freeze_backbone": True, "aux_features": "nss+exposure+jpeg_grid"},
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
    overrides = {"freeze_backbone": True, "aux_features": "nss+exposure+jpeg_grid"}
    spec = tiny_student(table, tmp_path, epochs=2, overrides=overrides).model  # the runs' model
    initial = build_model(spec, 100.0).state_dict()
    assert all(
        torch.equal(outs[True][k], initial[k])
        for k in initial
        if k.startswith("backbone.") and not k.endswith("num_batches_tracked")
    )
    assert not torch.equal(outs[True]["mlp.net.1.weight"], initial["mlp.net.1.weight"])


def test_fine_tuning_a_frozen_backbone_checkpoint_trains_on_cached_features(ray_local, tmp_path):
    """`--init` of a checkpoint whose backbone is frozen (its own config says so) computes the backbone's
    features once into the cache, as a fresh frozen student does, and ends where the same fine-tuning on images
    ends (the bound of the test above); the backbone stays the checkpoint's, the head moves."""
    import dataclasses

    from dpiqa.engine.training.model import ModelSpec
    from dpiqa.engine.training.run import TrainRun, run_training

    table = graded_table(tmp_path, n=30, seed=5)
    start = tmp_path / "start"
    run_training(tiny_student(table, start, epochs=1, overrides={"freeze_backbone": True}))
    spec = ModelSpec(kind="student", init=str(start))
    outs = {}
    for cache in (True, False):
        out = tmp_path / f"tuned-{cache}"
        recipe = dataclasses.replace(
            tiny_student(table, out, epochs=2, run=TrainRun(threads=1, cache_dir=str(tmp_path / f"cache-{cache}"))),
            model=spec,
            cache_features=cache,
        )
        run_training(recipe)
        outs[cache] = weights(out)
    # the backbone features went through the cache only when cached (the teacher-less student caches nothing else)
    assert any((tmp_path / "cache-True").rglob("*")) and not any((tmp_path / "cache-False").rglob("*"))
    for k in outs[True]:
        torch.testing.assert_close(outs[True][k], outs[False][k], rtol=0, atol=1e-3, msg=k)
    initial = weights(start)
    assert all(torch.equal(outs[True][k], initial[k]) for k in initial if k.startswith("backbone."))
    assert not torch.equal(outs[True]["mlp.net.1.weight"], initial["mlp.net.1.weight"])


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


def test_epoch_batches_over_many_blocks_start_no_worker_per_block(ray_local):
    """A training set of hundreds of blocks is indexed without a Ray worker process per block: its row counts and
    group ids come with the blocks' conversion (tasks of 1 CPU, run by the workers there are), not from zero-CPU
    tasks, for which Ray starts a Python worker each (62 at once on this 2-CPU node for the demo's student)."""
    import numpy as np
    import psutil
    import ray
    from ray._private import worker as ray_worker

    from dpiqa.engine.training.data import EpochBatches

    rows = [{"i": i, "target": float(i), "group": i // 3} for i in range(600)]
    ds = ray.data.from_items(rows, override_num_blocks=300).materialize()
    raylet = psutil.Process(ray_worker._global_node.all_processes["raylet"][0].process.pid)
    before = {p.pid for p in raylet.children(recursive=True)}
    batches = EpochBatches(ds, ["i", "target", "group"], group_column="group")
    started = [p for p in raylet.children(recursive=True) if p.pid not in before]
    assert len(batches) == 600 and np.array_equal(batches.groups, np.arange(600) // 3)
    assert len(started) <= 4, [p.cmdline()[:1] for p in started]  # 0 with the fix, 20 without it (2-core machine)


def test_bad_recipes_stop_before_ray_starts(tmp_path, capsys):
    """A global batch that does not divide among the workers, a missing dataset file, a teacher without its
    prior, --device cuda on a machine without one: one line, exit 2 or 4 (dpiqa/errors.py), before any Ray start-up (seconds, not a minute)."""
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
            [*tiny_teacher(table), "--workers", "2", "--executor", "local"],
            "--executor local runs one worker in this process; --workers 2 needs --executor ray",
            2,
        ),
        (  # the table has no group column: refused before Ray starts, not after (training/checks.py)
            [*tiny_teacher(table), "--grouped"],
            "--grouped splits need a group per image, and this dataset has none; drop --grouped",
            2,
        ),
    ]
    if not torch.cuda.is_available():  # --device cuda without a GPU: not waiting for one a local Ray never gets
        for executor in ("local", "ray"):
            cases.append(
                (
                    [*tiny_teacher(table), "--device", "cuda", "--executor", executor],
                    "--device cuda: 1 GPU(s) needed (one per worker) and this machine has 0 that torch can use",
                    2,
                )
            )
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
            *tiny_teacher(table),
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


def student_recipe(table: Path, out: Path, max_failures: int = 0, executor: str = "auto"):
    """A tiny student from scratch on the graded fixture (labels only), with the statistics the decoder measures
    before the resize beside its backbone: `learned` trains it once (in this process); the killed-distill test
    trains it again on Ray Train's workers, so the `statistics` column travels to a worker process too, and
    compares."""
    from dpiqa.engine.training.run import TrainRun

    # how it runs (TrainRun: failures, executor) is outside the recipe's identity
    return tiny_student(
        table,
        out,
        epochs=6,
        lr=1e-3,
        overrides={"aux_features": "nss+exposure+jpeg_grid"},
        run=TrainRun(threads=1, max_failures=max_failures, executor=executor),
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


def test_an_unknown_weights_dtype_stops_before_anything_starts(tmp_path):
    """`TrainConfig.weights_dtype` from the API (the CLI's choices cannot be wrong) is checked with the rest of the
    recipe, before Ray starts, not after the training when the model is saved."""
    import dataclasses

    from dpiqa.engine.training.run import run_training

    recipe = tiny_student(graded_table(tmp_path, n=12), tmp_path / "out", epochs=1)
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="weights_dtype 'half' is not one of float16, bfloat16, float32"):
        run_training(dataclasses.replace(recipe, weights_dtype="half"))
    assert time.monotonic() - t0 < 10 and not (tmp_path / "out").exists()


def test_a_rerun_with_weights_dtype_resaves_the_trained_run_measured_on_its_rounded_weights(learned, tmp_path):
    """`--weights-dtype` is how the output is stored, not what is trained: a rerun of a finished run (copied
    elsewhere, its Ray Train storage with it) with float16 trains no epoch again, saves the chosen epoch's
    weights rounded to float16 (about half the file), and its card's test metrics are the rounded model's,
    which `dpiqa eval` of the saved checkpoint reproduces."""
    import dataclasses
    import shutil

    from clirun import dpiqa

    from dpiqa.engine.training.run import run_training

    d, table = learned
    out = tmp_path / "student"
    shutil.copytree(d / "student", out)
    run_training(dataclasses.replace(student_recipe(table, out), weights_dtype="float16"))
    full, half = (json.loads((p / "card.json").read_text()) for p in (d / "student", out))
    assert half["weights_dtype"] == "float16" and "weights_dtype" not in full
    assert half["training"]["identity"] == full["training"]["identity"]
    assert half["training"]["history"] == full["training"]["history"]  # no epoch trained again, and it says so
    assert full["training"]["resumed_at_epoch"] == 0 and half["training"]["resumed_at_epoch"] == 6
    assert all(h["seconds"] > 0 for h in full["training"]["history"])  # each epoch's time, where it ran
    assert half["training"]["best_epoch"] == full["training"]["best_epoch"]
    a, b = weights(d / "student"), weights(out)
    for k in a:
        assert torch.equal(b[k], a[k].half().float() if a[k].is_floating_point() else a[k]), k
    size = {w: (p / "model.safetensors").stat().st_size for w, p in (("full", d / "student"), ("half", out))}
    assert size["half"] < 0.55 * size["full"]
    result = dpiqa("eval", "--model", str(out), "--dataset", "csv", "--root", str(table), "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout)["metrics"]
    for key in ("srcc", "plcc", "rmse", "n"):
        assert measured[key] == pytest.approx(half["metrics"]["test"][key], rel=1e-6, abs=1e-9), key
    assert half["metrics"]["test"]["rmse"] != full["metrics"]["test"]["rmse"]  # measured on other weights


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
    a, b = weights(d / "student"), weights(out)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
