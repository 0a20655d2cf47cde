"""The wheel as a user installs it: every package of the repository in it under the one `dpiqa` namespace,
and a user's project with its own `models` and `jobs` packages beside it, where `dpiqa --help` and a
score run as they do here and the user's packages stay theirs."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import corpus
import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"dpiqa": "dpiqa", "engine": "dpiqa.engine", "models": "dpiqa.models", "jobs": "dpiqa.jobs"}


def repository_packages() -> set[str]:
    out = set()
    for folder, name in FOLDERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder).parts
            out.add(".".join((name, *rel)))
    return out


def test_every_package_is_listed_in_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert listed == repository_packages()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(d), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return next(d.glob("dpiqa-*.whl"))


def test_the_wheel_installs_one_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("dpiqa-")}
    assert tops == {"dpiqa"}
    assert {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("__init__.py")} == repository_packages()
    assert "dpiqa/models/checkpoints/demo/model.safetensors" in names  # the shipped checkpoint
    assert {"dpiqa/ray.py", "dpiqa/engine/library.py", "dpiqa/engine/ray_transform.py"} <= set(names)  # the public API


@pytest.mark.slow  # builds and installs the wheel into a new environment
def test_installed_beside_a_users_models_and_jobs(wheel, tmp_path):
    # A fresh environment holding only the wheel; its dependencies come from this one's site-packages (a
    # .pth line adds a folder to sys.path without running this environment's .pth hooks, so the editable
    # install of the checkout is not seen there).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},  # only the wheel, not a checkout
    )
    project = tmp_path / "project"  # a user's project with packages named as our folders are
    for name in ("models", "jobs", "engine"):
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text(f"OWNER = 'the user: {name}'\n")
    (project / "in").mkdir()
    corpus.write_corpus(project / "in", shards=2, per_shard=3)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(project)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=300)

    helped = run(str(venv / "bin" / "dpiqa"), "--help")
    assert helped.returncode == 0 and "score" in helped.stdout, helped.stderr[-2000:]
    scored = run(
        str(venv / "bin" / "dpiqa"),
        "score",
        "--input",
        "in",
        "--output",
        "out",
        "--model",
        "dpiqa-student-tiny",
        "--executor",
        "local",
    )
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert "scored 6 rows from 2 shards: 6 ok, 0 errors" in scored.stdout
    where = run(
        str(venv / "bin" / "python"),
        "-c",
        "import models, jobs, dpiqa.models, dpiqa.jobs.cli; print(models.OWNER, jobs.OWNER, dpiqa.models.__file__)",
    )
    assert where.returncode == 0, where.stderr[-2000:]
    assert where.stdout.startswith("the user: models the user: jobs ")
    assert str(venv) in where.stdout.split()[-1]  # ours from the installed wheel, not the checkout
