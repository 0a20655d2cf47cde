"""A model config dataclass to and from the JSON of a checkpoint's `config.json`."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # torch and safetensors.torch are imported where weights are read or written
    pass

C = TypeVar("C")


def config_to_dict(config: Any) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: type[C], data: dict) -> C:
    """Build a config dataclass from JSON, turning lists back into tuples where the field is a tuple.
    Unknown keys are an error, so a checkpoint from a newer version fails loudly, not silently."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields) - {"architecture"}
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {sorted(unknown)} (checkpoint from a newer version?)")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        if name not in fields:
            continue
        if isinstance(value, list) and "tuple" in str(hints.get(name, "")):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[name] = value
    return cls(**kwargs)


def config_json(architecture: str, config: Any) -> str:
    """The `config.json` text of a model: its architecture name and config fields."""
    data = {"architecture": architecture, **config_to_dict(config)}
    return json.dumps(data, indent=2, sort_keys=True) + "\n"
