"""What makes two runs the same run: the one rule every resumable run's config follows.

A run's output (a scoring run's `_run.json`, a training run's Ray Train name and card) records its identity; a
rerun with the same identity resumes it, one with another is refused (scoring: `ForeignOutputError`) or trains
anew (training). Every field of a run's config is part of that identity unless it is declared a `setting`: where
the run reads or writes, how many workers, threads and retries, how it reports progress: what changes how the
run runs, never its results. Identity is the default so that a new field changes the identity (a rerun refuses
or starts afresh) until someone decides that it may change under a resumed run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# The field metadata of a setting (`setting()`); a field without it is part of the run's identity.
SETTING = "dpiqa_setting"


def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field outside the run's identity: a rerun that changes it resumes the same run."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={SETTING: True})


def is_setting(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get(SETTING))


def identity_fields(config: Any) -> dict[str, Any]:
    """The fields of a config dataclass that are part of its run's identity, by name; a dataclass value (a model
    spec, a split) as its `dataclasses.asdict`, whole."""
    out = {}
    for f in dataclasses.fields(config):
        if is_setting(f):
            continue
        value = getattr(config, f.name)
        out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out
