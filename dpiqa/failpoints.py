"""Failpoints: named places in the product's own code where a test can make the process die or raise.

A crash test must crash the product's real order of operations (Parquet, then marker), not a copy of it in
a test's subclass. The write path calls `failpoint("commit.after_parquet")` and the like; nothing happens
unless the environment variable `DPIQA_FAILPOINTS` names that point, as in FoundationDB's and TiKV's
failpoints (fail-rs). The variable is read once per process (Ray workers inherit the driver's environment):

    DPIQA_FAILPOINTS="commit.after_parquet=exit@3"      the 3rd time this process passes it: os._exit(137)
    DPIQA_FAILPOINTS="score.unit=raise"                  every time: raise FailpointError
    DPIQA_FAILPOINTS="a=exit@2,b=sleep:30"               several points; `sleep:S` hangs S seconds

`exit` ends the process at once with status 137 (as a SIGKILL would: no `finally`, no flush), so what is
on storage is exactly what a killed process leaves. With `@N` the action fires on the Nth pass only; a
`match:TEXT` suffix (`exit@1:match:00003`) counts only passes whose detail contains TEXT; a `once:PATH` suffix
fires in one process of all those that share PATH (the first to create the file), so that a worker started
again after the failpoint killed its predecessor goes on.
"""

from __future__ import annotations

import os
import threading
import time

_lock = threading.Lock()
_spec: dict[str, tuple[str, float, int | None, str | None, str | None]] | None = None
_passes: dict[str, int] = {}


class FailpointError(RuntimeError):
    """Raised by a failpoint set to `raise`."""


def _parse(text: str) -> dict[str, tuple[str, float, int | None, str | None, str | None]]:
    spec = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, action = item.partition("=")
        match = once = None
        if ":once:" in action:
            action, once = action.split(":once:", 1)
        if ":match:" in action:
            action, match = action.split(":match:", 1)
        nth = None
        if "@" in action:
            action, n = action.split("@", 1)
            nth = int(n)
        seconds = 0.0
        if action.startswith("sleep:"):
            action, seconds = "sleep", float(action.split(":", 1)[1])
        if action not in ("exit", "raise", "sleep"):
            raise ValueError(f"DPIQA_FAILPOINTS: unknown action {action!r} in {item!r} (exit, raise, sleep:S)")
        spec[name.strip()] = (action, seconds, nth, match, once)
    return spec


def failpoint(name: str, detail: str = "") -> None:
    """Do what `DPIQA_FAILPOINTS` says for `name` (nothing when it is unset: one dict lookup)."""
    global _spec
    if _spec is None:
        _spec = _parse(os.environ.get("DPIQA_FAILPOINTS", ""))
    entry = _spec.get(name)
    if entry is None:
        return
    action, seconds, nth, match, once = entry
    if match is not None and match not in detail:
        return
    with _lock:
        _passes[name] = count = _passes.get(name, 0) + 1
    if nth is not None and count != nth:
        return
    if once is not None:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    if action == "exit":
        os._exit(137)
    if action == "raise":
        raise FailpointError(f"failpoint {name} ({detail})")
    time.sleep(seconds)


def reset() -> None:
    """Read `DPIQA_FAILPOINTS` again and forget the counts (tests that set it in this process)."""
    global _spec
    with _lock:
        _spec = None
        _passes.clear()
