"""What the recipes that finish a checkpoint share: commands as a user types them, and the resave with a card."""

from __future__ import annotations

import re
from pathlib import Path

# Fields every card gets from the model and the save itself (`CheckpointMixin.card`, `save_pretrained`): a resave
# writes them anew, so they are not carried over from the trained run's card.
DERIVED = ("sha256", "parameters", "preprocessing", "architecture", "mos_scale", "code_version", "weights_dtype")


def as_typed(command: str) -> str:
    """A command as a script ran it, with a virtual environment's path to `dpiqa` shortened to the command a
    user types (for the commands written into reports and model cards)."""
    return re.sub(r"\S*/bin/dpiqa ", "dpiqa ", command)


def resave(run: Path, output: Path, run_card: dict, card: dict) -> None:
    """Save the trained run's model at `output` with its card's own fields (not the derived ones) and `card`
    over them, its weights stored as the run stored and measured them.

    Args:
        run: the trained run's checkpoint folder.
        output: the folder to write (absent or empty: the caller removes an older one).
        run_card: the run's `card.json`.
        card: the fields to write over the run's.
    """
    from dpiqa import models

    model = models.load_model(str(run))
    model.save_pretrained(
        str(output),
        weights_dtype=run_card.get("weights_dtype"),  # as the distill job stored and measured it
        card={**{k: v for k, v in run_card.items() if k not in DERIVED}, **card},
    )
