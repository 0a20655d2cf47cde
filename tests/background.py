"""Work a test runs on a thread while it injects a fault, with the thread's exception kept for the test."""

from __future__ import annotations

from collections.abc import Callable


def capture(fn: Callable[[], object], result: dict) -> Callable[[], None]:
    """`fn` for a thread: an exception it raises is kept in `result["error"]`, for the test to raise."""

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # re-raised by the test's thread
            result["error"] = exc

    return run
