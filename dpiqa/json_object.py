"""A JSON object from the bytes of a small file (a config, a card, a marker, a run record), or why not."""

from __future__ import annotations

import json
from typing import Any


class NotAJsonObject(ValueError):
    """The bytes are not JSON, or JSON of another kind than an object. The message says which, without naming
    the file: the caller knows where the bytes came from and what a damaged file means there."""


def json_object(data: bytes | str) -> dict[str, Any]:
    """The JSON object `data` holds.

    Raises:
        NotAJsonObject: `not JSON (what the parser says)`, or `JSON list, not an object` (any other kind).
    """
    try:
        value = json.loads(data)
    except ValueError as exc:  # UnicodeDecodeError too
        raise NotAJsonObject(f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise NotAJsonObject(f"JSON {type(value).__name__}, not an object")
    return value
