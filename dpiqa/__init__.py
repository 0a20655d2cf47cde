"""dpiqa: image quality at scale with DP-IQA on Ray.

The installed packages are one namespace, so no name of ours meets a user's own `models` or `jobs`:

    dpiqa.jobs     the `dpiqa` command line: one thin module per subcommand      (folder jobs/)
      |
    dpiqa.engine   shard reading, decoding, scoring stages, executors, writers,
      |            audit, filter, training                                       (folder engine/)
    dpiqa.models   the teacher, the student, baselines, checkpoints, scorers     (folder models/)
      |
    dpiqa          storage access (`dpiqa.storage`), image conversion (`dpiqa.images`), the code version
                   and machine (`dpiqa.version`), usage errors (`dpiqa.errors`)  (this folder)

Each layer imports only the layers below it (`tests/test_layers.py` checks it). In the repository the three
upper layers keep their folders at the top; the wheel installs them as `dpiqa/engine`, `dpiqa/models` and
`dpiqa/jobs` (pyproject.toml's package mapping).

The public API, stable, is what `__all__` lists and nothing else (the layers above are the command line's):

    scorer = dpiqa.load_scorer("demo")          # what `dpiqa score --model` takes
    scorer("photo.jpg")                         # a float in the model's MOS units (higher is better)
    scorer.score(paths, errors="status")        # dpiqa.Scores: score, status, error, width, height, map
    ds.map_batches(dpiqa.ray.Scorer, fn_constructor_kwargs={"model": "demo", "column": "image"}, ...)

Its names live in the engine (`engine/library.py`, `engine/ray_transform.py`) and are looked up on first use
(this module's `__getattr__` and `dpiqa/ray.py`'s): importing `dpiqa` imports neither torch nor Ray. These two
facades are the layer rule's one exception, and only lazily (`tests/test_layers.py`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

__all__ = ["load_scorer", "QualityScorer", "Scores", "ImageError", "ray"]

_PUBLIC = {
    "load_scorer": "dpiqa.engine.library",
    "QualityScorer": "dpiqa.engine.library",
    "Scores": "dpiqa.engine.library",
    "ImageError": "dpiqa.engine.library",
}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    if name == "ray":  # `dpiqa.ray.Scorer` after a plain `import dpiqa`
        return importlib.import_module("dpiqa.ray")
    raise AttributeError(f"module 'dpiqa' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


# A source checkout run without installing (PYTHONPATH=<checkout>, e.g. on a machine the repository was
# copied to): the upper layers sit beside this folder, not in it, so the package also looks there. An
# installed wheel holds them inside this folder and its parent is site-packages, where nothing is added.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "engine" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # the package's own module search path
