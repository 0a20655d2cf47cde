"""`dpiqa demo` and `dpiqa ablate` end to end on tiny inputs, in process (the demo without Ray; the ablation on
the session's local Ray): what they print and write agrees with an independent reading of their outputs."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from clirun import dpiqa
from corpus import graded_table
from scipy.stats import spearmanr

from dpiqa.engine.demo import FAMILIES, LEVELS, PHOTOGRAPHS
from dpiqa.engine.distortions import DISTORTIONS


@pytest.mark.slow
def test_demo_scores_every_image_and_its_ranking_is_the_scores(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    r = dpiqa("demo", "--model", "dpiqa-student-tiny", "--executor", "local", "--output", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert FAMILIES == (*DISTORTIONS, "motion_blur")
    images = len(PHOTOGRAPHS) * (1 + len(FAMILIES) * len(LEVELS))
    rows = [row for f in sorted((out / "scores" / "scores").glob("*.parquet")) for row in pq.read_table(f).to_pylist()]
    assert len(rows) == images and all(row["status"] == "ok" for row in rows)
    assert len(list((out / "corpus").rglob("*.tar"))) == len(PHOTOGRAPHS)
    audit = json.loads((out / "audit.json").read_text())
    assert audit["summary"]["rows"] == images and audit["summary"]["error_rate"] == 0
    assert (out / "report.html").read_text().lstrip().lower().startswith("<!doctype html")

    # the ranking, recomputed here from the Parquet: per (photograph, kind) Spearman's rho of level vs score
    by: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    refs = {}
    for row in rows:
        photo, tag = row["key"].split("/", 1)
        if tag == "reference":
            refs[photo] = row["score"]
        else:
            kind, level = tag.rsplit("-", 1)
            by[(photo, kind)][int(level)] = row["score"]
    ranking = json.loads((out / "ranking.json").read_text())
    assert set(ranking["per_distortion"]) == set(FAMILIES)
    for kind in FAMILIES:
        levels = [0, *LEVELS]
        rhos = []
        for _, photo, _ in PHOTOGRAPHS:
            scores = [refs[photo], *(by[(photo, kind)][lv] for lv in LEVELS)]
            rho = spearmanr(levels, scores).statistic
            if np.isfinite(rho):
                rhos.append(rho)
                assert ranking["per_distortion"][kind]["srcc_by_photograph"][photo] == pytest.approx(rho, abs=1e-12)
            else:
                assert ranking["per_distortion"][kind]["srcc_by_photograph"][photo] is None
        got = ranking["per_distortion"][kind]["srcc_level_vs_score"]
        if rhos:
            assert got == pytest.approx(np.mean(rhos), abs=1e-9)
            assert f"| {kind} | {got:+.3f} |" in r.stdout  # the printed table is the file's
        mean0 = np.mean([refs[p] for _, p, _ in PHOTOGRAPHS])
        assert ranking["per_distortion"][kind]["mean_score_by_level"]["0"] == pytest.approx(mean0, rel=1e-6)


@pytest.mark.slow
def test_ablate_trains_each_variant_and_tabulates_it(tmp_path: Path, ray_local) -> None:
    table = graded_table(tmp_path, n=24)
    out = tmp_path / "ablation"
    r = dpiqa(
        "ablate",
        "--kind",
        "teacher",
        "--variants",
        "paper,no-text-adapter",
        "--dataset",
        "csv",
        "--root",
        str(table),
        "--config",
        "dpiqa-teacher-tiny",
        "--random-prior",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--threads",
        "1",
        "--output",
        str(out),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((out / "ablation.json").read_text())
    rows = {row["variant"]: row for row in doc}
    assert set(rows) == {"paper", "no-text-adapter"}
    assert rows["no-text-adapter"]["changes"] == {"text_adapter": False}
    # the variant without the text adapter has exactly the adapter's parameters fewer
    paper, ablated = rows["paper"]["parameters"], rows["no-text-adapter"]["parameters"]
    assert ablated["text_adapter"] == 0 < paper["text_adapter"]
    assert paper["total"] - ablated["total"] == paper["text_adapter"]
    for name, row in rows.items():
        card = json.loads((out / name / "card.json").read_text())
        srcc = row["summary"]["srcc"]["median"]
        assert card["metrics"]["test"]["srcc"] == pytest.approx(srcc, abs=1e-9)  # the table is the cards'
        assert card["switches"]["text_adapter"] is (name == "paper")
        assert f"{name}: SRCC {srcc:.4f}" in r.stdout
    table_md = (out / "ablation.md").read_text()
    assert "paper" in table_md and "no-text-adapter" in table_md
