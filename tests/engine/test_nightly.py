"""Nightly catalog audits as a team runs them: shards land in dated folders, `score` scores only what is new and
records each run, `audit --run latest --baseline-runs N` compares tonight with the nights before, the history
grows a row a night, and the third night, with blurred and noisy images and more broken files, alerts.

BRISQUE scores (a classical model that reacts to blur and noise the same way every time). The PSI threshold
is 2, not the usual 0.25: PSI over decile bins of 48 images a night is noisy (two clean nights of the same
scenes measure about 0.7 here, with a KS D under 0.1); the degraded night measures about 7."""

from __future__ import annotations

import io
import json
import tempfile
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_audit import CHROMIUM_FLAGS, chromium

from dpiqa.engine.distortions import distort
from dpiqa.engine.output import OutputLocation
from dpiqa.jobs.cli import main

NIGHTS = ("2026-11-25", "2026-11-26", "2026-11-27")


def photographs() -> list[np.ndarray]:
    from skimage import data

    return [np.asarray(getattr(data, n)())[..., :3] for n in ("astronaut", "coffee", "chelsea", "rocket")]


def night_shards(folder: Path, night: int, rng: np.random.Generator) -> None:
    """Two shards of 24 photographs' crops; the third night's are blurred and noisy, and 12 of 48 are broken."""
    folder.mkdir(parents=True)
    sources = photographs()
    import tarfile

    for s in range(2):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for i in range(24):
                src = sources[i % len(sources)]  # every night the same mix of scenes
                y, x = rng.integers(0, src.shape[0] - 256), rng.integers(0, src.shape[1] - 256)
                crop = src[y : y + 256, x : x + 256]
                if night == 2:
                    crop = distort(distort(crop, "gaussian_blur", 4, seed=i), "gaussian_noise", 4, seed=i)
                buf = io.BytesIO()
                Image.fromarray(crop).save(buf, "JPEG", quality=92)
                data = buf.getvalue()
                if night == 2 and (s * 24 + i) % 4 == 0:
                    data = data[: len(data) // 3]  # a broken file: its entropy-coded data cut
                info = tarfile.TarInfo(f"n{night}_{s}_{i:02d}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def three_nights(tmp_path_factory):
    """The catalog scored and audited night after night; yields the folder, the audits' exit codes and their
    printed lines."""
    tmp_path = tmp_path_factory.mktemp("nights")
    catalog, scores = tmp_path / "catalog", tmp_path / "scores"
    rng = np.random.default_rng(7)
    codes, lines = [], []
    for night, date in enumerate(NIGHTS):
        night_shards(catalog / date, night, rng)
        with redirect_stdout(io.StringIO()):
            assert (
                main(
                    [
                        "score",
                        "--input",
                        str(catalog),
                        "--output",
                        str(scores),
                        "--model",
                        "brisque",
                        "--executor",
                        "local",
                    ]
                )
                == 0
            )
        printed = io.StringIO()
        with redirect_stdout(printed):
            code = main(
                [
                    "audit",
                    "--scores",
                    str(scores),
                    "--run",
                    "latest",
                    "--baseline-runs",
                    "7",
                    "--max-error-rate",
                    "0.1",
                    "--max-drift",
                    "2",
                    "--report",
                    str(tmp_path / f"{date}.html"),
                    "--json",
                    str(tmp_path / f"{date}.json"),
                    "--thumbnails",
                    "2",
                ]
            )
        codes.append(code)
        lines.append(printed.getvalue())
    return tmp_path, codes, lines


def test_three_nights(three_nights):
    tmp_path, codes, lines = three_nights
    scores = tmp_path / "scores"
    # each night scored only its own shards, and left a record of them
    runs = sorted((scores / "runs").glob("*.json"))
    assert len(runs) == 3
    written = [sorted(OutputLocation(str(scores)).run_shard_names(json.loads(r.read_text()))) for r in runs]
    assert written == [[f"{d}__00000", f"{d}__00001"] for d in NIGHTS]

    assert codes == [0, 0, 3], lines
    third = json.loads((tmp_path / f"{NIGHTS[2]}.json").read_text())
    assert third["selection"]["kind"] == "run" and third["selection"]["shards"] == 2
    assert third["summary"]["rows"] == 48 and third["summary"]["errors"] == 12  # the broken files of tonight only
    assert any("error rate 25.0000% exceeds --max-error-rate 0.1" in a for a in third["alerts"])
    drift_alert = next(a for a in third["alerts"] if "score drift" in a)
    assert "the 2 runs before" in drift_alert and "mean score" in drift_alert
    baseline_mean, tonight_mean = third["baseline"]["summary"]["mean"], third["summary"]["mean"]
    assert tonight_mean < baseline_mean  # blur and noise score worse (BRISQUE)
    assert "ALERT score drift" in lines[2] and "ALERT error rate" in lines[2]

    history = pq.read_table(scores / "audits" / "history.parquet").to_pylist()
    assert [h["alert"] for h in history] == [False, False, True]
    assert (
        history[2]["psi"] > 2 > history[1]["psi"] and history[0]["psi"] is None
    )  # the first night had nothing before it
    assert [round(h["error_rate"], 4) for h in history] == [0.0, 0.0, 0.25]


def test_three_nights_page_in_a_browser(three_nights):
    """The third night's page shows the drop against the first two nights, in a real browser (a test of its
    own: without Chromium outside CI it is skipped, not the audits' checks above)."""
    tmp_path, _, _ = three_nights
    binary, driver_path = chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"]:
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        browser.get((tmp_path / f"{NIGHTS[2]}.html").as_uri())
        nights = browser.execute_script(
            "return Array.from(document.querySelectorAll('#history tr.night, #history tr.alert-night'))"
            ".map(r => [r.className, r.cells[1].textContent, r.cells[3].textContent])"
        )
        trend = browser.execute_script(
            "const i = document.getElementById('plot-trend');return i && i.complete && i.naturalWidth > 0"
        )
        banner = browser.execute_script("return document.getElementById('alerts').textContent")
        selection = browser.execute_script("return document.getElementById('selection').textContent")
    finally:
        browser.quit()
    assert [n[0] for n in nights] == ["night", "night", "alert-night"] and nights[2][2].strip() == "25.00%"
    assert trend is True and "score drift" in banner and "run " in selection


def test_a_quiet_night_is_a_normal_night_and_an_unknown_run_a_one_line_error(tmp_path, capsys):
    """The README's crontab line on a night with no new shards: the audit writes its page and JSON saying so,
    adds the night to the history, and exits 0 (nothing to alert on)."""
    catalog, scores = tmp_path / "catalog", tmp_path / "scores"
    night_shards(catalog / NIGHTS[0], 0, np.random.default_rng(1))
    args = ["score", "--input", str(catalog), "--output", str(scores), "--model", "brisque", "--executor", "local"]
    assert main(args) == 0 and main(args) == 0  # the second run finds nothing new
    capsys.readouterr()
    report, doc_path = tmp_path / "quiet.html", tmp_path / "quiet.json"
    audit = ["audit", "--scores", str(scores), "--run", "latest", "--baseline-runs", "7", "--max-error-rate", "0.02"]
    assert main([*audit, "--report", str(report), "--json", str(doc_path)]) == 0
    out = capsys.readouterr().out
    assert "audited 0 rows of 0 shards" in out and "a quiet night" in out and "found nothing new" in out
    doc = json.loads(doc_path.read_text())
    assert doc["selection"]["quiet"] is True and doc["selection"]["shards"] == 0 and doc["alerts"] == []
    assert doc["summary"]["rows"] == 0 and doc["drift"] is None
    assert "a quiet night" in report.read_text() and "wrote no shard" in report.read_text()
    history = pq.read_table(scores / "audits" / "history.parquet").to_pylist()
    assert [(h["rows"], h["alert"]) for h in history] == [(0, False)]
    assert main(["audit", "--scores", str(scores), "--run", "20990101T000000Z-abcdef"]) == 4
    assert "no run '20990101T000000Z-abcdef'" in capsys.readouterr().err


@pytest.mark.parametrize("night", [0])
def test_a_baseline_from_an_earlier_audit_document(tmp_path, capsys, night):
    """`--baseline-json`: the earlier audit's histogram re-binned onto tonight's grid; the same scores give
    no drift."""
    catalog, scores = tmp_path / "catalog", tmp_path / "scores"
    night_shards(catalog / NIGHTS[night], night, np.random.default_rng(3))
    assert (
        main(["score", "--input", str(catalog), "--output", str(scores), "--model", "brisque", "--executor", "local"])
        == 0
    )
    assert main(["audit", "--scores", str(scores), "--json", str(tmp_path / "a.json")]) == 0
    assert (
        main(
            [
                "audit",
                "--scores",
                str(scores),
                "--baseline-json",
                str(tmp_path / "a.json"),
                "--json",
                str(tmp_path / "b.json"),
            ]
        )
        == 0
    )
    doc = json.loads((tmp_path / "b.json").read_text())
    assert doc["drift"]["psi"] < 1e-6 and doc["baseline"]["document"] == str(tmp_path / "a.json")
    assert [s["mean_change"] for s in doc["per_source_vs_baseline"]] == [0.0]


def small_night(folder: Path, blur: int) -> None:
    """One shard of 8 crops of one photograph, blurred at `blur` (0: none): each night its own score level."""
    folder.mkdir(parents=True)
    src = photographs()[1]
    samples = []
    for i in range(8):
        crop = src[i * 20 : i * 20 + 200, i * 30 : i * 30 + 200]
        if blur:
            crop = distort(crop, "gaussian_blur", blur, seed=i)
        buf = io.BytesIO()
        Image.fromarray(crop).save(buf, "PNG")
        samples.append((f"b{blur}_{i}", {"png": buf.getvalue()}))
    import corpus

    corpus.write_shard(folder / "00000.tar", samples)


def test_baseline_runs_are_the_nights_before_by_their_rows_and_the_drift_threshold_is_exceeded_not_met(tmp_path):
    """Three nights at three score levels (clean, blurred, more blurred). Auditing the third with
    `--baseline-runs 2` compares it with the rows of the two nights before, with `--baseline-runs 1` with the
    night before alone, each checked against the baseline's rows read here from the nights' Parquet files.
    `--max-drift` alerts when the PSI exceeds it: a threshold equal to tonight's PSI does not alert, the next
    float below it does; `--max-error-rate 0` with no error rows does not alert either."""
    catalog, scores = tmp_path / "catalog", tmp_path / "scores"
    nights = dict(zip(NIGHTS, (0, 2, 4), strict=True))
    for date, blur in nights.items():
        small_night(catalog / date, blur)
        args = ["score", "--input", str(catalog), "--output", str(scores), "--model", "brisque", "--executor", "local"]
        with redirect_stdout(io.StringIO()):
            assert main(args) == 0
    rows = {d: pq.read_table(scores / "scores" / f"{d}__00000.parquet").column("score").to_numpy() for d in NIGHTS}
    means = {d: float(np.mean(r)) for d, r in rows.items()}
    assert means[NIGHTS[0]] - means[NIGHTS[1]] > 1 and abs(means[NIGHTS[0]] - means[NIGHTS[2]]) > 1  # three levels

    def audit(name: str, *extra: str) -> tuple[int, dict]:
        with redirect_stdout(io.StringIO()):
            code = main(["audit", "--scores", str(scores), "--run", "latest", "--json", str(tmp_path / name), *extra])
        return code, json.loads((tmp_path / name).read_text())

    for n, before in ((2, NIGHTS[:2]), (1, NIGHTS[1:2])):
        _, doc = audit(f"runs-{n}.json", "--baseline-runs", str(n), "--max-drift", "1000")
        expected = np.concatenate([rows[d] for d in before]).astype(np.float64)
        base = doc["baseline"]["summary"]
        assert base["rows"] == len(expected) == 8 * n and doc["baseline"]["shards"]["completed"] == n
        assert base["mean"] == pytest.approx(expected.mean(), rel=1e-6)
        assert (base["min"], base["max"]) == pytest.approx((expected.min(), expected.max()), rel=1e-6)
        assert f"the {n} runs before" in doc["baseline"]["scores"]
        assert doc["summary"]["rows"] == 8 and doc["summary"]["mean"] == pytest.approx(means[NIGHTS[2]], rel=1e-6)

    code, doc = audit("psi.json", "--baseline-runs", "2", "--max-drift", "1000", "--max-error-rate", "0")
    psi = doc["drift"]["psi"]
    assert code == 0 and psi > 0.5 and doc["alerts"] == []  # no error row: a rate of 0 does not exceed 0
    code, doc = audit("at.json", "--baseline-runs", "2", "--max-drift", repr(psi))
    assert code == 0 and doc["drift"]["psi"] == psi and doc["alerts"] == []
    code, doc = audit("below.json", "--baseline-runs", "2", "--max-drift", repr(float(np.nextafter(psi, 0))))
    assert code == 3 and [a for a in doc["alerts"] if "score drift" in a]
