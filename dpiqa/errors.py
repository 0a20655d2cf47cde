"""What the command line's exit status tells a scheduler.

- 0: done.
- 1 (`FAILED_SHARDS`): the run ran, and some shards failed (unreadable, or their output could not be
  written); they are listed, the rest is complete, and a rerun retries only them.
- 2 (`USAGE`, `UsageError`, and argparse's own): the options as typed can never work, whatever the files
  hold (a bad value, two options that contradict each other, a flag the model does not support).
- 3 (`ALERT`): `dpiqa audit` crossed an alert threshold.
- 4 (`CANNOT_RUN`): the command could not start on what it names: a missing or corrupt file or checkpoint,
  shards that do not exist, unreachable storage, an output holding another run's results. One line says
  what, and nothing was written.
"""

from __future__ import annotations

FAILED_SHARDS = 1
USAGE = 2
ALERT = 3
CANNOT_RUN = 4


class UsageError(ValueError):
    """The command line asks for something that cannot be (exit status 2). A `ValueError`, so library callers
    that catch bad input keep working."""
