"""The examples in `examples/` run as a user runs them (in this process, on the session's Ray), and they and the
README's "In Python" section use the public API only: the names in `dpiqa.__all__` and `dpiqa.ray.__all__`."""

from __future__ import annotations

import ast
import io
import itertools
import re
import runpy
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

import dpiqa
import dpiqa.ray

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.py"))

# The stable public API. A change here is a change users see: say so in the README's "In Python" section.
PUBLIC = {
    "dpiqa": ["load_scorer", "QualityScorer", "Scores", "ImageError", "ray"],
    "dpiqa.ray": ["Scorer", "add_scores"],
}


def test_the_public_names_are_listed_in_all_and_resolve():
    assert dpiqa.__all__ == PUBLIC["dpiqa"] and dpiqa.ray.__all__ == PUBLIC["dpiqa.ray"]
    for module, names in PUBLIC.items():
        for name in names:
            assert getattr(sys.modules[module], name) is not None
            assert name in dir(sys.modules[module])
    with pytest.raises(AttributeError, match="has no attribute 'storage_options'"):
        dpiqa.storage_options  # noqa: B018 - an attribute that does not exist says so


def private_uses(source: str) -> list[str]:
    """The names of `dpiqa` a piece of code reaches that are not public: imports, `dpiqa.X` attribute chains and
    module paths written as strings (`importlib.import_module("dpiqa.engine.demo")`)."""
    modules = {"dpiqa", "dpiqa.ray"}

    def private(dotted: str) -> bool:
        parts = dotted.split(".")
        if parts[0] != "dpiqa" or len(parts) == 1:
            return False
        if parts[1] not in PUBLIC["dpiqa"]:
            return True
        return parts[1] == "ray" and len(parts) > 2 and parts[2] not in PUBLIC["dpiqa.ray"]

    def dotted(node: ast.AST) -> str | None:
        names = []
        while isinstance(node, ast.Attribute):
            names.append(node.attr)
            node = node.value
        return ".".join([node.id, *reversed(names)]) if isinstance(node, ast.Name) else None

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if private(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dpiqa":
            if node.module not in modules:
                found.append(node.module)
            else:
                found += [f"{node.module}.{a.name}" for a in node.names if private(f"{node.module}.{a.name}")]
        elif isinstance(node, ast.Attribute) and (name := dotted(node)) and private(name):
            found.append(name)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [s for s in re.findall(r"\bdpiqa(?:\.\w+)+", node.value) if private(s)]
    return sorted(set(found))


def readme_python() -> str:
    """The Python blocks of the README's "In Python" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## In Python\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```python\n(.*?)```", section, re.S))


def test_examples_and_the_readme_use_public_names_only():
    assert [p.name for p in EXAMPLES] == ["hf_datasets.py", "ray_pipeline.py", "score_folder.py"]
    for path in EXAMPLES:
        assert private_uses(path.read_text()) == [], path.name
    code = readme_python()
    assert "dpiqa.load_scorer(" in code and "dpiqa.ray.Scorer" in code
    assert private_uses(code) == []


def test_the_check_sees_a_private_name():
    code = (
        "import dpiqa, dpiqa.ray\nimport dpiqa.engine.demo\nfrom dpiqa import load_scorer, storage\n"
        "from dpiqa.models import load_model\nfrom dpiqa.ray import Scorer, actor_pool\n"
        "dpiqa.load_scorer('demo').score([])\ndpiqa.errors.UsageError\ndpiqa.ray.Scorer\ndpiqa.ray.init_ray()\n"
        "importlib.import_module('dpiqa.jobs.cli')\n"
    )
    assert private_uses(code) == [
        "dpiqa.engine.demo",
        "dpiqa.errors",
        "dpiqa.errors.UsageError",
        "dpiqa.jobs.cli",
        "dpiqa.models",
        "dpiqa.ray.actor_pool",
        "dpiqa.ray.init_ray",
        "dpiqa.storage",
    ]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of six JPEGs: a demo-corpus photograph and its Gaussian blur at levels 1 to 5."""
    from dpiqa.engine import demo

    folder = tmp_path_factory.mktemp("photos")
    source, name, loader = next(p for p in demo.PHOTOGRAPHS if p[1] == "chelsea")
    for key, members in itertools.islice(demo.samples(source, name, demo.reference(loader)), 6):
        level = key.rsplit("-", 1)[1] if "-" in key else "0"
        Image.open(io.BytesIO(members["png"])).save(folder / f"blur{level}.jpg", quality=95)
    return folder


def run_example(name: str, *args: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, *args])
    runpy.run_path(str(REPO / "examples" / name), run_name="__main__")


@pytest.fixture(scope="module")
def expected(photos: Path) -> dict[str, float]:
    """The library scorer's scores of the photographs, by file name (checked against `dpiqa score` in test_api)."""
    paths = sorted(photos.glob("*.jpg"))
    return dict(zip([p.name for p in paths], dpiqa.load_scorer("demo", device="cpu")(paths).tolist(), strict=True))


def test_score_folder_shows_the_worst(photos, expected, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "jpgs"
    folder.mkdir()
    for path in photos.glob("*.jpg"):
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.jpg").write_bytes(b"<html>404</html>")
    run_example("score_folder.py", str(folder), "--worst", "3", "--sheet", str(tmp_path / "worst.png"),
                monkeypatch=monkeypatch)  # fmt: skip
    out = capsys.readouterr().out
    assert "7 images scored with demo: 6 ok" in out
    assert f"broken.jpg: not_an_image ({folder / 'broken.jpg'}: not an image PIL can identify (16 bytes))" in out
    worst = re.findall(r"^  \d\. (\S+)  (-?[\d.]+)  ", out, re.M)
    # the three strongest blurs, the strongest first (the demo model ranks blur at SRCC -0.99, README)
    assert [name for name, _ in worst] == ["blur5.jpg", "blur4.jpg", "blur3.jpg"]
    assert [float(score) for _, score in worst] == pytest.approx([expected[n] for n, _ in worst], abs=1e-3)
    assert Image.open(tmp_path / "worst.png").size == (480, 160)


def test_ray_pipeline_writes_the_scores(photos, expected, ray_local, tmp_path, monkeypatch, capsys):
    run_example("ray_pipeline.py", str(photos), str(tmp_path / "out"), monkeypatch=monkeypatch)
    table = pq.read_table(tmp_path / "out")
    assert set(table.column_names) == {"path", "score", "status", "error"}
    rows = {Path(r["path"]).name: r for r in table.to_pylist()}
    assert rows.keys() == expected.keys() and {r["status"] for r in rows.values()} == {"ok"}
    # read_images' arrays (PIL's full decode of these small JPEGs) score as the files do
    assert {n: r["score"] for n, r in rows.items()} == pytest.approx(expected, abs=1e-4)
    assert "6 images scored; the lowest: " in capsys.readouterr().out


def test_hf_datasets_map_adds_a_quality_column(photos, expected, monkeypatch, capsys):
    run_example("hf_datasets.py", str(photos), monkeypatch=monkeypatch)
    out = capsys.readouterr().out
    match = re.search(r"6 images; worst quality (-?[\d.]+), best (-?[\d.]+)", out)
    assert match, out
    assert float(match.group(1)) == pytest.approx(min(expected.values()), abs=1e-3)
    assert float(match.group(2)) == pytest.approx(max(expected.values()), abs=1e-3)
