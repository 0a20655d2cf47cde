"""`dpiqa audit` on the command line: exit status for cron, printed alerts, and a real `score` run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from corpus import write_corpus
from scored import score_shards

from dpiqa.jobs.cli import main


def fixed(shift: float, fail_every: int = 0):  # a score function
    def score(url: str, index: int, key: str) -> float | None:
        if fail_every and index % fail_every == 0:
            return None
        return 2.0 + shift + 0.1 * index

    return score


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("audit-cli")
    (root / "shards").mkdir()
    urls = write_corpus(root / "shards", shards=2, per_shard=10)
    out = {name: str(root / name) for name in ("today", "same", "shifted")}
    score_shards(urls, out["today"], fixed(0.0, fail_every=4))
    score_shards(urls, out["same"], fixed(0.0, fail_every=4))
    score_shards(urls, out["shifted"], fixed(0.6))
    return out


def test_no_alert_exits_zero(runs: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(
        [
            "audit",
            "--scores",
            runs["today"],
            "--baseline",
            runs["same"],
            "--json",
            str(tmp_path / "a.json"),
            "--max-drift",
            "0.1",
            "--max-error-rate",
            "0.5",
            "--thumbnails",
            "0",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "ALERT" not in out
    assert "PSI 0.0000" in out
    assert json.loads((tmp_path / "a.json").read_text())["alerts"] == []


def test_drift_alert_exits_three(runs: dict[str, str], capsys: pytest.CaptureFixture) -> None:
    code = main(
        ["audit", "--scores", runs["today"], "--baseline", runs["shifted"], "--max-drift", "0.25", "--thumbnails", "0"]
    )
    out = capsys.readouterr().out
    assert code == 3
    assert [line for line in out.splitlines() if line.startswith("ALERT")] == [
        line for line in out.splitlines() if "ALERT score drift PSI" in line
    ]


def test_error_rate_alert_exits_three(runs: dict[str, str], capsys: pytest.CaptureFixture) -> None:
    # 3 of every 10 samples fail (indices 0, 4, 8): the error rate is 0.3.
    assert main(["audit", "--scores", runs["today"], "--max-error-rate", "0.29", "--thumbnails", "0"]) == 3
    assert "ALERT error rate 30.0000% exceeds --max-error-rate 0.29" in capsys.readouterr().out
    assert main(["audit", "--scores", runs["today"], "--max-error-rate", "0.3", "--thumbnails", "0"]) == 0


def test_missing_run_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["audit", "--scores", str(tmp_path / "nothing")]) == 4
    assert "no completed shard" in capsys.readouterr().err


def test_audit_of_a_real_score_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`dpiqa score` (random tiny student, local executor) then `dpiqa audit` on its output."""
    (tmp_path / "shards").mkdir()
    write_corpus(tmp_path / "shards", shards=2, per_shard=6)
    assert (
        main(
            [
                "score",
                "--input",
                str(tmp_path / "shards"),
                "--output",
                str(tmp_path / "scores"),
                "--model",
                "dpiqa-student-tiny",
                "--executor",
                "local",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "audit",
                "--scores",
                str(tmp_path / "scores"),
                "--report",
                str(tmp_path / "r.html"),
                "--json",
                str(tmp_path / "a.json"),
                "--thumbnails",
                "2",
            ]
        )
        == 0
    )
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["summary"]["rows"] == 12 and doc["summary"]["ok"] == 12
    assert doc["model"]["model"] == "dpiqa-student-tiny"
    assert all(t["error"] is None for t in doc["thumbnails"]["lowest"] + doc["thumbnails"]["highest"])
    assert (tmp_path / "r.html").read_text().count("data:image/jpeg;base64,") == 4
