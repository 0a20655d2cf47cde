"""The audit of an output of 10^4 shards: a page of a bounded size listing the worst and best shards, and every
shard's row in the Parquet table beside the JSON; the same after `dpiqa compact`."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from clirun import dpiqa

from dpiqa.engine import schema
from dpiqa.engine.audit import AuditConfig, run_audit
from dpiqa.engine.compact import CompactConfig, compact
from dpiqa.engine.output import OutputLocation

ROWS = 4


def worst(shards: int) -> set[int]:
    """50 shards whose every row failed."""
    return {i for i in range(shards) if i % (shards // 50) == 1}


def best(shards: int) -> set[int]:
    """50 shards scored 9 and up; the others score below 5."""
    return {i for i in range(shards) if i % (shards // 50) == 2}


def write_output(out: Path, shards: int) -> None:
    """OUT/scores/NAME.parquet and OUT/_done/NAME.json for `shards` shards, as `dpiqa score` lays them out."""
    identity = {"model": "synthetic", "checkpoint_hash": "test:synthetic"}
    location = OutputLocation(str(out))
    digest = location.claim(identity)
    scores_schema = schema.with_metadata(schema.SCORES_SCHEMA, {**identity, "code_version": "test"})
    (out / "scores").mkdir()
    (out / "_done").mkdir()
    rng = np.random.default_rng(0)
    failing, high = worst(shards), best(shards)
    for i in range(shards):
        name, url = f"{i:05d}", f"s3://corpus/shards/{i:05d}.tar"
        failed = i in failing
        score = (
            np.full(ROWS, np.nan, np.float32)
            if failed
            else (9 + rng.random(ROWS) if i in high else 5 * rng.random(ROWS))
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


def test_help_names_the_per_shard_table() -> None:
    out = dpiqa("audit", "--help")
    assert out.returncode == 0 and "NAME.shards.parquet" in out.stdout and "50 worst" in " ".join(out.stdout.split())


def test_the_page_and_json_list_the_worst_and_best_shards_and_parquet_has_all(tmp_path: Path) -> None:
    check_audit(tmp_path, 150, compacted=False)


@pytest.mark.slow  # ~4 min on the shared 2-core VM (writing 10^4 files ~1 min, each audit ~0.5-1 min, compact ~1 min)
def test_audit_of_ten_thousand_shards(tmp_path: Path) -> None:
    check_audit(tmp_path, 10_000, compacted=True)


def check_audit(tmp_path: Path, shards: int, compacted: bool) -> None:
    out = tmp_path / "out"
    write_output(out, shards)
    docs = []
    for form in ("per-shard files", "compacted")[: 1 + compacted]:
        if form == "compacted":
            result = compact(CompactConfig(str(out), target_mb=1.0))
            assert result.shards == shards and not list((out / "scores").iterdir())
        t0 = time.monotonic()
        report, doc_path = tmp_path / f"{form}.html", tmp_path / f"{form}.json"
        run_audit(AuditConfig(scores=str(out), report=str(report), json=str(doc_path), thumbnails=0))
        seconds = time.monotonic() - t0
        doc = json.loads(doc_path.read_text())
        assert report.stat().st_size < 2 << 20 and doc_path.stat().st_size < 1 << 20, (form, seconds)
        assert doc["summary"]["rows"] == shards * ROWS
        assert doc["per_shard_table"]["shards"] == shards and doc["per_shard_table"]["shown"] == 100
        listed = {int(r["name"]) for r in doc["per_shard"]}
        assert listed == worst(shards) | best(shards)
        table_path = tmp_path / f"{form}.shards.parquet"
        assert doc["per_shard_table"]["file"] == str(table_path)
        table = pq.read_table(doc["per_shard_table"]["file"]).to_pandas()
        assert len(table) == shards and (table["rows"] == ROWS).all()
        assert set(table.name[table.error_rate == 1.0].astype(int)) == worst(shards)
        assert set(table.name[table["min"] >= 9].astype(int)) == best(shards)
        text = re.sub(r"<[^>]+>", "", report.read_text())  # the page's text, numbers out of their tags
        assert f"{shards:,} shards; the 100 worst and best are listed; every shard: {table_path}." in text
        doc.pop("generated")
        doc["per_shard_table"].pop("file")
        docs.append(doc)
    assert docs[0] == docs[-1]
