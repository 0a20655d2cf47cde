"""The audit of an output of 10^4 shards: a page of a bounded size listing the worst and best shards, and every
shard's row in the Parquet table beside the JSON; the same after `dpiqa compact`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpiqa.engine import schema
from dpiqa.engine.audit import AuditConfig, run_audit
from dpiqa.engine.compact import CompactConfig, compact
from dpiqa.engine.output import OutputLocation

SHARDS, ROWS = 10_000, 4
WORST = {i for i in range(SHARDS) if i % 200 == 7}  # 50 shards whose every row failed
BEST = {i for i in range(SHARDS) if i % 200 == 11}  # 50 shards scored 9 and up, the others below 5


def write_output(out: Path) -> None:
    """OUT/scores/NAME.parquet and OUT/_done/NAME.json for 10^4 shards, as `dpiqa score` lays them out."""
    identity = {"model": "synthetic", "checkpoint_hash": "test:synthetic"}
    location = OutputLocation(str(out))
    digest = location.claim(identity)
    scores_schema = schema.with_metadata(schema.SCORES_SCHEMA, {**identity, "code_version": "test"})
    (out / "scores").mkdir()
    (out / "_done").mkdir()
    rng = np.random.default_rng(0)
    for i in range(SHARDS):
        name, url = f"{i:05d}", f"s3://corpus/shards/{i:05d}.tar"
        failed = i in WORST
        score = (
            np.full(ROWS, np.nan, np.float32)
            if failed
            else (9 + rng.random(ROWS) if i in BEST else 5 * rng.random(ROWS))
        )
        status = [schema.SCORE_ERROR if failed else schema.OK] * ROWS
        table = pa.Table.from_arrays(
            [
                pa.array([f"{name}_{k}" for k in range(ROWS)]),
                pa.array([url] * ROWS),
                pa.array(np.arange(ROWS), pa.int64()),
                pa.array(score, pa.float32(), mask=np.isnan(score)),
                pa.array(["synthetic"] * ROWS),
                pa.array(np.full(ROWS, 40, np.int32)),
                pa.array(np.full(ROWS, 30, np.int32)),
                pa.array(status),
                pa.array(["no finite score" if failed else None] * ROWS, pa.string()),
            ],
            schema=scores_schema,
        )
        pq.write_table(table, out / "scores" / f"{name}.parquet")
        marker = {"shard": url, "rows": ROWS, "statuses": {status[0]: ROWS}, "config_hash": digest}
        (out / "_done" / f"{name}.json").write_text(json.dumps(marker))


@pytest.mark.slow  # ~4 min on the shared 2-core VM (writing 10^4 files ~1 min, each audit ~0.5-1 min, compact ~1 min)
def test_audit_of_ten_thousand_shards(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_output(out)
    docs = []
    for form in ("per-shard files", "compacted"):
        if form == "compacted":
            result = compact(CompactConfig(str(out), target_mb=1.0))
            assert result.shards == SHARDS and not list((out / "scores").iterdir())
        t0 = time.monotonic()
        report, doc_path = tmp_path / f"{form}.html", tmp_path / f"{form}.json"
        run_audit(AuditConfig(scores=str(out), report=str(report), json=str(doc_path), thumbnails=0))
        seconds = time.monotonic() - t0
        doc = json.loads(doc_path.read_text())
        assert report.stat().st_size < 2 << 20 and doc_path.stat().st_size < 1 << 20, (form, seconds)
        assert doc["summary"]["rows"] == SHARDS * ROWS
        assert doc["per_shard_table"]["shards"] == SHARDS and doc["per_shard_table"]["shown"] == 100
        listed = {int(r["name"]) for r in doc["per_shard"]}
        assert listed == WORST | BEST
        assert doc["per_shard_table"]["file"] == str(tmp_path / f"{form}.shards.parquet")
        table = pq.read_table(doc["per_shard_table"]["file"]).to_pandas()
        assert len(table) == SHARDS and (table["rows"] == ROWS).all()
        assert set(table.name[table.error_rate == 1.0].astype(int)) == WORST
        assert set(table.name[table["min"] >= 9].astype(int)) == BEST
        assert "every shard: " in report.read_text()
        doc.pop("generated")
        doc["per_shard_table"].pop("file")
        docs.append(doc)
    assert docs[0] == docs[1]
