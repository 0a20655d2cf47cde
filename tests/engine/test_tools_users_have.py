"""Shards made by the tools users have: an img2dataset output folder (`tests/fixtures/img2dataset`, made by
img2dataset 1.47.0: `tests/fixtures/make_img2dataset.sh`) and shards written by webdataset's `ShardWriter`;
`filter`'s output read back through webdataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import corpus
import numpy as np
import pyarrow.parquet as pq
import webdataset as wds

from dpiqa.engine import schema
from dpiqa.engine.executor.local import LocalExecutor
from dpiqa.engine.filter import FilterConfig, run_filter
from dpiqa.engine.output import OutputLocation
from dpiqa.engine.pipeline import ScoreConfig, run_score

MODEL = "dpiqa-student-tiny"
IMG2DATASET = Path(__file__).resolve().parents[1] / "fixtures" / "img2dataset"


def rows(out: Path) -> list[dict]:
    loc = OutputLocation(str(out))
    return [r for name in sorted(loc.done()) for r in pq.read_table(loc.child("scores", f"{name}.parquet")).to_pylist()]


def test_an_img2dataset_folder_scores_its_tars_and_joins_back_on_key(tmp_path):
    folder = tmp_path / "laion-part"
    shutil.copytree(IMG2DATASET, folder)
    result = run_score(ScoreConfig(input=str(folder), output=str(tmp_path / "scores"), model=MODEL), LocalExecutor())
    assert result.manifest["shards"]["total"] == 2  # the .parquet and _stats.json files are not shards
    ours = {r["key"]: r for r in rows(tmp_path / "scores")}
    theirs = pq.read_table(folder / "00000.parquet").to_pylist() + pq.read_table(folder / "00001.parquet").to_pylist()
    written = {r["key"] for r in theirs if r["status"] == "success"}  # img2dataset writes only its successes
    assert set(ours) == written and all(ours[k]["status"] == "ok" for k in written)
    joined = [(r["key"], r["caption"], ours[r["key"]]["score"]) for r in theirs if r["key"] in ours]
    assert len(joined) == 6 and all(np.isfinite(score) for _, _, score in joined)


def test_webdataset_shardwriter_shards_score_as_documented(tmp_path):
    """Keys with folders and dots, several extensions per sample, gzip-compressed `.tgz`."""
    shards = tmp_path / "wds"
    shards.mkdir()
    with wds.ShardWriter(str(shards / "part-%05d.tgz"), maxcount=3, compress=True) as sink:
        for i in range(5):
            sink.write(
                {
                    "__key__": f"photos/2026/img{i:03d}",
                    "jpg": corpus.jpeg(i),
                    "json": {"i": i},
                    "seg.png": corpus.png(seed=i),
                    "txt": f"caption {i}",
                }
            )
        sink.write({"__key__": "photos/v1.2", "jpg": corpus.jpeg(9)})  # a dot in the key: the key ends there
    assert sorted(p.name for p in shards.iterdir()) == ["part-00000.tgz", "part-00001.tgz"]
    run_score(ScoreConfig(input=str(shards), output=str(tmp_path / "scores"), model=MODEL), LocalExecutor())
    got = rows(tmp_path / "scores")
    assert [(r["key"], r["status"]) for r in got] == [
        *[(f"photos/2026/img{i:03d}", "ok") for i in range(5)],
        ("photos/v1", "ok"),
    ]
    # webdataset's own reader sees the same samples under the same keys
    seen = [s["__key__"] for s in wds.WebDataset(str(shards / "part-{00000..00001}.tgz"), shardshuffle=False)]
    assert seen == [r["key"] for r in got]


def test_filtered_shards_read_back_through_webdataset_byte_for_byte(tmp_path):
    shards = tmp_path / "in"
    shards.mkdir()
    originals = {}
    with wds.ShardWriter(str(shards / "%05d.tar"), maxcount=4) as sink:
        for i in range(8):
            sample = {
                "__key__": f"k{i:02d}",
                "jpg": corpus.jpeg(i, size=(48, 40)),
                "json": json.dumps({"i": i}),
                "txt": f"caption {i}",
            }
            originals[sample["__key__"]] = sample
            sink.write(sample)
    run_score(ScoreConfig(input=str(shards), output=str(tmp_path / "scores"), model=MODEL), LocalExecutor())
    result = run_filter(
        FilterConfig(
            scores=str(tmp_path / "scores"), input=str(shards), output=str(tmp_path / "kept"), top_fraction=0.5
        ),
        executor="local",
    )
    assert result.exit_code == 0 and result.manifest["kept"] == 4
    raw = list(wds.WebDataset(str(tmp_path / "kept" / "{00000..00001}.tar"), shardshuffle=False))
    assert len(raw) == 4
    for sample in raw:
        original = originals[sample["__key__"]]
        assert sample["jpg"] == original["jpg"] and sample["txt"].decode() == original["txt"]
        assert json.loads(sample["json"]) == json.loads(original["json"])
    decoded = list(wds.WebDataset(str(tmp_path / "kept" / "{00000..00001}.tar"), shardshuffle=False).decode("pil"))
    assert all(s["jpg"].size == (48, 40) for s in decoded)
    # the kept keys are the top half by score
    scores = {r["key"]: r["score"] for r in rows(tmp_path / "scores") if r["status"] == schema.OK}
    top = sorted(scores, key=lambda k: -scores[k])[:4]
    assert sorted(s["__key__"] for s in raw) == sorted(top)
