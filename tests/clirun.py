"""`dpiqa` run inside the test process, on the session's Ray, its output captured as a subprocess's would be.

A subprocess costs a cold Python + torch start and, for a Ray job, a Ray start of its own (10-20 s each on a
2-core machine); tests that must SIGKILL a run or check the process's exit status keep using subprocesses."""

from __future__ import annotations

import io
import logging
import signal
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def dpiqa(*args: str) -> Result:
    """`dpiqa ARGS...` in this process: exit status, stdout, and stderr with the log lines in it."""
    from dpiqa.jobs.cli import main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    level, sigterm = root.level, signal.getsignal(signal.SIGTERM)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors and --help
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        signal.signal(signal.SIGTERM, sigterm)
    return Result(int(code or 0), out.getvalue(), err.getvalue())


def run(capsys, *argv: str) -> tuple[int, str, str]:  # capsys: pytest.CaptureFixture
    """`dpiqa.jobs.cli.main(argv)` as the entry point runs it, its output read through pytest's `capsys`: exit status,
    stdout, stderr; fails the test on a traceback in either."""
    from dpiqa.jobs.cli import main

    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return code, out, err


def one_line(err: str) -> str:
    """The one line an error printed (fails the test when it printed more or none)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def last_line(err: str) -> str:
    """The last line printed (the error line after any log lines)."""
    return err.strip().splitlines()[-1]
