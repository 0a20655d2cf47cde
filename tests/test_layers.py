"""The layers point one way: dpiqa (storage, images, version) <- dpiqa.models <- dpiqa.engine <- dpiqa.jobs.
Every import of every module is read (at the top, inside functions, and module paths written as strings
for lazy loading), and one that reaches a higher layer fails the test, naming the file and the line."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# folder -> (layer name, rank); a module may import its own rank and below
LAYERS = {
    "dpiqa": ("dpiqa", 0),
    "models": ("dpiqa.models", 1),
    "engine": ("dpiqa.engine", 2),
    "jobs": ("dpiqa.jobs", 3),
}


def rank_of(module: str) -> int | None:
    """The layer rank of an imported module name (None: not ours)."""
    for _, (name, rank) in sorted(LAYERS.items(), key=lambda kv: -kv[1][1]):
        if module == name or module.startswith(name + "."):
            return rank
    return None


def upward_imports(path: Path, rank: int) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("dpiqa."):
            names = [node.value.split(":")[0]]  # "dpiqa.models.student:DPIQAStudent", a worker setup hook
        for name in names:
            other = rank_of(name)
            if other is not None and other > rank:
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
    return sorted(set(found))


def layer_violations(root: Path = REPO) -> list[str]:
    out = []
    for folder, (_, rank) in LAYERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            out += upward_imports(path, rank)
    return out


def test_no_layer_imports_a_higher_one():
    assert layer_violations() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a model module importing the engine, at the top or lazily, is caught."""
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    for folder in LAYERS:
        (tmp_path / folder).mkdir()
    (tmp_path / "models" / "bad.py").write_text(
        "import os\nfrom dpiqa.storage import join\n\n\ndef f():\n    from dpiqa.engine.io import x\n"
    )
    (tmp_path / "dpiqa" / "worse.py").write_text('HOOK = "dpiqa.jobs.cli:main"\n')
    (tmp_path / "jobs" / "fine.py").write_text("from dpiqa.engine import pipeline\nimport dpiqa.models\n")
    assert layer_violations(tmp_path) == [
        "dpiqa/worse.py:1: dpiqa.jobs.cli",
        "models/bad.py:6: dpiqa.engine.io",
        "models/bad.py:6: dpiqa.engine.io.x",
    ]
