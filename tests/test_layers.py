"""The layers point one way: dpiqa (storage, images, version) <- dpiqa.models <- dpiqa.engine <- dpiqa.jobs.
Every import of every module is read (at the top, inside functions, and module paths written as strings
for lazy loading), and one that reaches a higher layer fails the test, naming the file and the line.

One exception, narrow: the public API's two facades (`FACADES`: `dpiqa/__init__.py`, `dpiqa/ray.py`) may name
the engine lazily, as a module path written as a string or an import inside a function, because the public
names live there; an import at a facade's top level still fails, as does the same in any other bottom-layer file,
and importing them must import no upper layer (`test_importing_the_facades_imports_no_upper_layer`)."""

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


# bottom-layer files that may name the engine lazily (see the module docstring)
FACADES = ("dpiqa/__init__.py", "dpiqa/ray.py")
LAZY_LAYER = 2  # dpiqa.engine: the facades may reach it, and nothing above it


def lazy_nodes(tree: ast.Module) -> set[int]:
    """The ids of the nodes inside a function body (run when called, not when the module is imported)."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside.update(id(n) for n in ast.walk(node) if n is not node)
    return inside


def upward_imports(path: Path, rank: int, facade: bool = False) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    lazy = lazy_nodes(tree) if facade else set()
    found = []
    for node in ast.walk(tree):
        names = []
        lazy_ok = facade and (isinstance(node, ast.Constant) or id(node) in lazy)
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("dpiqa."):
            names = [node.value.split(":")[0]]  # "dpiqa.models.student:DPIQAStudent", a worker setup hook
        for name in names:
            other = rank_of(name)
            if other is not None and other > rank and not (lazy_ok and other <= LAZY_LAYER):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
    return sorted(set(found))


def layer_violations(root: Path = REPO) -> list[str]:
    out = []
    for folder, (_, rank) in LAYERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            out += upward_imports(path, rank, facade=path.relative_to(root).as_posix() in FACADES)
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


def test_the_facades_may_name_the_engine_lazily_and_only_they(tmp_path, monkeypatch):
    """The exception for the public API: in `dpiqa/__init__.py` and `dpiqa/ray.py` a string or an import inside a
    function may name the engine; a top-level import there, a lazy reach to the jobs, or the same lazy names in
    any other bottom-layer file are still caught."""
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    for folder in LAYERS:
        (tmp_path / folder).mkdir()
    lazy = 'PUBLIC = {"x": "dpiqa.engine.library"}\n\n\ndef f():\n    from dpiqa.engine.library import x\n'
    (tmp_path / "dpiqa" / "__init__.py").write_text(lazy)
    (tmp_path / "dpiqa" / "ray.py").write_text(lazy + "\n\nimport dpiqa.engine.ray_transform\n")
    (tmp_path / "dpiqa" / "other.py").write_text(lazy)
    (tmp_path / "dpiqa" / "jobs_facade.py").write_text("")
    (tmp_path / "dpiqa" / "__init__.py").write_text(lazy + '\n\ndef g():\n    return "dpiqa.jobs.cli"\n')
    assert layer_violations(tmp_path) == [
        "dpiqa/__init__.py:9: dpiqa.jobs.cli",
        "dpiqa/other.py:1: dpiqa.engine.library",
        "dpiqa/other.py:5: dpiqa.engine.library",
        "dpiqa/other.py:5: dpiqa.engine.library.x",
        "dpiqa/ray.py:8: dpiqa.engine.ray_transform",
    ]


def test_importing_the_facades_imports_no_upper_layer():
    """`import dpiqa, dpiqa.ray` and listing the public names stay cheap: no engine, models, torch or Ray."""
    import subprocess
    import sys

    code = (
        "import sys, dpiqa, dpiqa.ray; dir(dpiqa); dir(dpiqa.ray); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray') or m.startswith('dpiqa.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['dpiqa.ray']"
