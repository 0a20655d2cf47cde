"""Every recipe in `recipes/` (what made the shipped checkpoint and the committed reports) still loads and
answers `--help`, opens with a one-line purpose, and none imports `bench`."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
HELPERS = {"checkpoint_card.py"}  # shared by recipes, not one itself
PYTHON = sorted(p.name for p in RECIPES.glob("*.py") if p.name not in HELPERS)
SHELL = sorted(p.name for p in RECIPES.glob("*.sh"))


def test_the_recipes_are_there() -> None:
    """The glob finds the recipes (a moved folder would otherwise leave every test below without a case)."""
    assert "train_demo_checkpoint.sh" in SHELL and "finish_demo_checkpoint.py" in PYTHON and len(PYTHON) >= 8


@pytest.mark.parametrize("name", PYTHON)
def test_a_python_recipe_loads_and_answers_help(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Loaded in this process (a fresh interpreter per recipe would take seconds each) and run with `--help`:
    argparse prints the usage and exits 0, so the recipe's imports and its parser are whole."""
    monkeypatch.setattr(sys, "path", [str(RECIPES), *sys.path])  # as `python recipes/NAME` runs it
    monkeypatch.setattr(sys, "argv", [f"recipes/{name}", "--help"])
    spec = importlib.util.spec_from_file_location(f"recipe_{name[:-3]}", RECIPES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")


@pytest.mark.parametrize("name", SHELL)
def test_a_shell_recipe_parses(name: str) -> None:
    out = subprocess.run(["bash", "-n", str(RECIPES / name)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("name", PYTHON + SHELL + sorted(HELPERS))
def test_a_recipe_opens_with_its_purpose_and_does_not_import_bench(name: str) -> None:
    text = (RECIPES / name).read_text()
    if name.endswith(".py"):
        first, second = text.split("\n", 2)[:2]
        assert first.startswith('"""') and first.endswith((".", '."""')), first
        assert second == "" or first.endswith('"""'), f"{name}: the purpose is one line, then a blank line"
    else:
        shebang, first = text.split("\n", 2)[:2]
        assert shebang.startswith("#!") and first.startswith("# ") and first.endswith("."), first
    assert not re.search(r"^\s*(from|import) bench\b", text, re.MULTILINE), f"{name} imports bench"
