"""The README's command blocks run as written: every bash block is marked `run` or `skip` with a reason, and
the `run` blocks run in order in a scratch folder on a small corpus in `demo-out/corpus` (what `make demo`
leaves there), with this checkout's `dpiqa` on the PATH."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import corpus
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(?:<!-- readme-test: (run|skip: [^>]+) -->\n)?```bash\n(.*?)```", re.S)


def blocks() -> list[tuple[str | None, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer((REPO / "README.md").read_text())]


def test_every_block_says_whether_it_runs():
    found = blocks()
    assert len(found) >= 6
    unmarked = [code.splitlines()[0] for mark, code in found if mark is None]
    assert not unmarked, f"README bash blocks without a readme-test mark: {unmarked}"


def test_the_runnable_blocks_run_as_written(tmp_path):
    (tmp_path / "demo-out" / "corpus").mkdir(parents=True)
    for s in range(2):
        corpus.write_shard(tmp_path / "demo-out" / "corpus" / f"{s:05d}.tar", corpus.good_samples(f"s{s}_", 5, seed=s))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    runnable = [code for mark, code in blocks() if mark == "run"]
    assert len(runnable) >= 2
    for code in runnable:
        out = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert out.returncode == 0, f"{code}\n--- stderr:\n{out.stderr[-3000:]}"
        assert "Traceback" not in out.stderr
    # what the blocks promise is there
    assert len(pq.read_table(tmp_path / "my-scores" / "scores" / "00000.parquet")) == 5
    assert (tmp_path / "my-report.html").stat().st_size > 1000 and (tmp_path / "report.html").exists()
    assert sorted(p.name for p in (tmp_path / "best-fifth").glob("*.tar")) == ["00000.tar", "00001.tar"]
