"""What the command line's exit status tells a scheduler.

- 0: done.
- 1: the command was valid but what it met was not: failed shards, a missing or corrupt file, a checkpoint
  that is no checkpoint, unreachable storage, an output holding another run's results. One line says what.
- 2: a usage error (`UsageError`, and argparse's own): the options as typed can never work, whatever the
  files hold (a bad value, two options that contradict each other, a flag the model does not support).
- 3: `dpiqa audit` crossed an alert threshold.
"""

from __future__ import annotations


class UsageError(ValueError):
    """The command line asks for something that cannot be (exit status 2). A `ValueError`, so library callers
    that catch bad input keep working."""
