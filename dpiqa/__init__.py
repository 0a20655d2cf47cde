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
"""

from __future__ import annotations

from pathlib import Path

# A source checkout run without installing (PYTHONPATH=<checkout>, e.g. on a machine the repository was
# copied to): the upper layers sit beside this folder, not in it, so the package also looks there. An
# installed wheel holds them inside this folder and its parent is site-packages, where nothing is added.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "engine" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821 - the package's own module search path
