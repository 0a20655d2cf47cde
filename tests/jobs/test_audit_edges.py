"""`dpiqa audit` where the scores folder is not as it should be (issue 39): read-only to the auditor, or a
scores file cut in half. The page and JSON the user asked for are still written where they can be, and what
went wrong is one line naming the file."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import corpus
import pytest

from dpiqa.jobs.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("scored")
    (d / "in").mkdir()
    corpus.write_corpus(d / "in", shards=2, per_shard=3)
    assert main(["score", "--input", str(d / "in"), "--output", str(d / "out"), "--model", "brisque"]) == 0
    return d / "out"


def _as_user_without_root_powers() -> list[str]:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a folder root cannot write cannot be made")
    return [setpriv, "--bounding-set=-all"]


def test_a_read_only_scores_folder_still_gets_its_report_and_json(scored, tmp_path):
    scores = tmp_path / "scores"
    shutil.copytree(scored, scores)
    folders = [Path(d) for d, _, _ in os.walk(scores)]
    for d in folders:
        d.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.update(RAY_USAGE_STATS_ENABLED="0", AWS_EC2_METADATA_DISABLED="true", HF_HUB_OFFLINE="1")
    report, doc = tmp_path / "audit.html", tmp_path / "audit.json"
    try:
        done = subprocess.run(
            [*_as_user_without_root_powers(), sys.executable, "-m", "dpiqa.jobs.cli", "audit", "--scores", str(scores)]
            + ["--report", str(report), "--json", str(doc), "--thumbnails", "0"],
            env=env,
            capture_output=True,
            text=True,
        )
    finally:
        for d in folders:
            d.chmod(0o755)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    warning = [line for line in done.stderr.splitlines() if line.startswith("dpiqa audit: warning: ")]
    assert len(warning) == 1, done.stderr
    assert f"{scores / 'audits' / 'history.parquet'} could not be updated" in warning[0]
    assert "--no-history skips it" in warning[0]
    assert json.loads(doc.read_text())["summary"]["rows"] == 6
    assert "could not be updated" in report.read_text()
    assert not (scores / "audits").exists()


def test_a_scores_file_cut_in_half_is_named(scored, tmp_path, capsys):
    scores = tmp_path / "scores"
    shutil.copytree(scored, scores)
    cut = scores / "scores" / "00001.parquet"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    capsys.readouterr()
    code = main(["audit", "--scores", str(scores), "--json", str(tmp_path / "a.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4 and len(err) == 1, err
    assert err[0].startswith(f"dpiqa audit: error: {cut}: not a readable Parquet file")
    assert f"delete {scores / '_done' / '00001.json'}" in err[0]
    assert not (tmp_path / "a.json").exists()
